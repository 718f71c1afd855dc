// Every datadiet op's schema, defined once (linked into _C). The CPU kernels register under
// these names from the _cpu_<capability> module the loader picks (cpu_kernels.cpp), the CUDA
// kernels from _C_cuda.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(datadiet, m) {
  m.def(
      "ce_scores(Tensor logits, Tensor targets, Tensor? feature_sqnorm, int ignore_index, "
      "float label_smoothing, ScalarType? embedding_dtype) -> (Tensor loss, Tensor el2n, "
      "Tensor grad_norm, Tensor confidence, Tensor margin, Tensor entropy, Tensor correct, "
      "Tensor embedding)");
  m.def("topk_select(Tensor scores, int[] offsets, int[] ks, bool largest) -> Tensor");
  m.def("weighted_sample(Tensor weights, int[] offsets, int[] ks, int seed) -> Tensor");
  m.def(
      "selective_backprop_keep_(Tensor losses, Tensor(a!) history, Tensor(b!) state, float beta, int seed, "
      "int step) -> (Tensor keep, Tensor percentile)");
  m.def(
      "omp(Tensor atoms, Tensor targets, int[] offsets, int[] budgets, float lam, bool positive, float tol) -> "
      "(Tensor indices, Tensor weights, Tensor residual, Tensor iterations, Tensor stop, Tensor rejected)");
  m.def(
      "omp_factored(Tensor errors, Tensor features, bool bias, Tensor c0, Tensor b2, int[] offsets, int[] budgets, float lam, "
      "bool positive, float tol) -> (Tensor indices, Tensor weights, Tensor residual, Tensor iterations, Tensor stop, "
      "Tensor rejected)");
  m.def("per_sample_grad_sqnorm(Tensor a, Tensor g, int groups) -> Tensor");
  m.def(
      "per_sample_conv_grad_sqnorm(Tensor x, Tensor g, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> Tensor");
  m.def("average_(Tensor(a!)[] dst, Tensor[] sources, float[] weights) -> ()");
  m.def("lerp_(Tensor(a!)[] dst, Tensor[] other, float alpha) -> ()");
  m.def("magnitude_prune_(Tensor(a!)[] tensors, Tensor(b!)[] masks, int[] keep) -> ()");
}
