// datadiet::ce_scores — host-side declarations and argument checks shared by the
// CPU (.cpp) and CUDA (.cu) implementations. The schema lives in schemas.cpp.
#pragma once

#include <optional>
#include <tuple>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;
using CeScoresOutput = std::tuple<StableTensor, StableTensor, StableTensor, StableTensor, StableTensor,
                                  StableTensor, StableTensor, StableTensor>;

CeScoresOutput ce_scores_cpu(const StableTensor& logits, const StableTensor& targets,
                             const std::optional<StableTensor>& feature_sqnorm, int64_t ignore_index,
                             double label_smoothing, std::optional<ScalarType> embedding_dtype);
CeScoresOutput ce_scores_cuda(const StableTensor& logits, const StableTensor& targets,
                              const std::optional<StableTensor>& feature_sqnorm, int64_t ignore_index,
                              double label_smoothing, std::optional<ScalarType> embedding_dtype);

// Kernel-facing view of the [N] score outputs.
struct CeScoresPointers {
  float *loss, *el2n, *grad_norm, *confidence, *margin, *entropy;
  bool* correct;
};

// The op's outputs on logits' device: six float32 [N] scores, bool [N] correct, and the
// [N, C] embedding in embedding_dtype (an empty [0] float32 tensor when not asked for).
inline CeScoresOutput allocate_ce_scores(const StableTensor& logits, std::optional<ScalarType> embedding_dtype) {
  const int64_t N = logits.size(0), C = logits.size(1);
  auto score = [&](ScalarType t) { return torch::stable::new_empty(logits, {N}, t); };
  StableTensor embedding = embedding_dtype ? torch::stable::new_empty(logits, {N, C}, *embedding_dtype)
                                           : torch::stable::new_empty(logits, {0}, ScalarType::Float);
  return {score(ScalarType::Float), score(ScalarType::Float), score(ScalarType::Float), score(ScalarType::Float),
          score(ScalarType::Float), score(ScalarType::Float), score(ScalarType::Bool),  embedding};
}

inline CeScoresPointers score_pointers(const CeScoresOutput& out) {
  return {std::get<0>(out).mutable_data_ptr<float>(), std::get<1>(out).mutable_data_ptr<float>(),
          std::get<2>(out).mutable_data_ptr<float>(), std::get<3>(out).mutable_data_ptr<float>(),
          std::get<4>(out).mutable_data_ptr<float>(), std::get<5>(out).mutable_data_ptr<float>(),
          std::get<6>(out).mutable_data_ptr<bool>()};
}

inline bool is_float_type(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// Shape, dtype and device checks (no data is read).
inline void check_ce_scores_args(const StableTensor& logits, const StableTensor& targets,
                                 const std::optional<StableTensor>& feature_sqnorm, double label_smoothing,
                                 std::optional<ScalarType> embedding_dtype) {
  const char* op = "ce_scores";
  DD_CHECK(logits.dim() == 2, op, "logits must be 2-D [N, C], got shape ", logits.sizes());
  DD_CHECK(is_float_type(logits.scalar_type()), op,
           "logits must be float32, float16 or bfloat16, got ", logits.scalar_type());
  DD_CHECK(logits.size(1) >= 1, op, "logits need at least one class, got shape ", logits.sizes());
  DD_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), op, "targets must have shape [",
           logits.size(0), "] to match logits ", logits.sizes(), ", got ", targets.sizes());
  DD_CHECK(targets.scalar_type() == ScalarType::Long, op, "targets must be int64 class indices, got ",
           targets.scalar_type());
  DD_CHECK(targets.device() == logits.device(), op, "targets are on another device than logits");
  if (feature_sqnorm.has_value()) {
    const StableTensor& h = *feature_sqnorm;
    DD_CHECK(h.dim() == 1 && h.size(0) == logits.size(0), op, "feature_sqnorm must have shape [",
             logits.size(0), "], got ", h.sizes());
    DD_CHECK(h.scalar_type() == ScalarType::Float, op, "feature_sqnorm must be float32, got ", h.scalar_type());
    DD_CHECK(h.device() == logits.device(), op, "feature_sqnorm is on another device than logits");
  }
  DD_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, "label_smoothing must be in [0, 1], got ",
           label_smoothing);
  DD_CHECK(!embedding_dtype.has_value() || is_float_type(*embedding_dtype), op,
           "embedding_dtype must be float32, float16 or bfloat16, got ", *embedding_dtype);
}

}  // namespace datadiet
