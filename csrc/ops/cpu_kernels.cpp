// The CPU kernels of every datadiet op (schemas: schemas.cpp). This file and every CPU kernel
// source are compiled once per CPU capability (CMakeLists.txt: default, avx2, avx512), each
// copy into its own _cpu_<capability> module with hidden symbols; datadiet._extension loads
// exactly one of them, so one process never mixes instruction sets.
#include <torch/csrc/stable/library.h>

#include "ops/ce_scores/ce_scores.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/merge/merge.h"
#include "ops/omp/omp.h"
#include "ops/select/select.h"

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
