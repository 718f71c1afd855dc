// One registration block: every datadiet op's schema, and its CPU kernel.
// CUDA kernels register under the same names from the _C_cuda module.
#include <torch/csrc/stable/library.h>

#include "ops/ce_scores/ce_scores.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/merge/merge.h"
#include "ops/omp/omp.h"
#include "ops/select/select.h"

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

STABLE_TORCH_LIBRARY_IMPL(datadiet, CPU, m) {
  m.impl("ce_scores", TORCH_BOX(&datadiet::ce_scores_cpu));
  m.impl("topk_select", TORCH_BOX(&datadiet::topk_select_cpu));
  m.impl("weighted_sample", TORCH_BOX(&datadiet::weighted_sample_cpu));
  m.impl("selective_backprop_keep_", TORCH_BOX(&datadiet::selective_backprop_keep_cpu));
  m.impl("omp", TORCH_BOX(&datadiet::omp_cpu));
  m.impl("omp_factored", TORCH_BOX(&datadiet::omp_factored_cpu));
  m.impl("per_sample_grad_sqnorm", TORCH_BOX(&datadiet::per_sample_grad_sqnorm_cpu));
  m.impl("per_sample_conv_grad_sqnorm", TORCH_BOX(&datadiet::per_sample_conv_grad_sqnorm_cpu));
  m.impl("average_", TORCH_BOX(&datadiet::average_cpu));
  m.impl("lerp_", TORCH_BOX(&datadiet::lerp_cpu));
  m.impl("magnitude_prune_", TORCH_BOX(&datadiet::magnitude_prune_cpu));
}
