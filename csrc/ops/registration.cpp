// One registration block: every datadiet op's schema, and its CPU kernel.
// CUDA kernels register under the same names from the _C_cuda module.
#include <torch/csrc/stable/library.h>

#include "ops/ce_scores/ce_scores.h"

STABLE_TORCH_LIBRARY(datadiet, m) {
  m.def(
      "ce_scores(Tensor logits, Tensor targets, Tensor? feature_sqnorm, int ignore_index, "
      "float label_smoothing, ScalarType? embedding_dtype) -> (Tensor loss, Tensor el2n, "
      "Tensor grad_norm, Tensor confidence, Tensor margin, Tensor entropy, Tensor correct, "
      "Tensor embedding)");
}

STABLE_TORCH_LIBRARY_IMPL(datadiet, CPU, m) { m.impl("ce_scores", TORCH_BOX(&datadiet::ce_scores_cpu)); }
