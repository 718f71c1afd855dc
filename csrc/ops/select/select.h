// Selection ops — host-side declarations and the argument checks shared by the CPU
// (.cpp) and CUDA (.cu) implementations. Schemas live in schemas.cpp.
//
// Segments: a 1-D input of n elements is cut into G segments by offsets
// [0 = o_0 <= o_1 <= ... <= o_G = n]; segment g selects ks[g] of its elements and
// writes their global indices to out[sum(ks[:g]) ...], ordered by (key, index).
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;

StableTensor topk_select_cpu(const StableTensor& values, std::vector<int64_t> offsets, std::vector<int64_t> ks,
                             bool largest);
StableTensor topk_select_cuda(const StableTensor& values, std::vector<int64_t> offsets, std::vector<int64_t> ks,
                              bool largest);
StableTensor weighted_sample_cpu(const StableTensor& weights, std::vector<int64_t> offsets,
                                 std::vector<int64_t> ks, int64_t seed);
StableTensor weighted_sample_cuda(const StableTensor& weights, std::vector<int64_t> offsets,
                                  std::vector<int64_t> ks, int64_t seed);
std::tuple<StableTensor, StableTensor> selective_backprop_keep_cpu(const StableTensor& losses, StableTensor history,
                                                                   StableTensor state, double beta, int64_t seed,
                                                                   int64_t step);
std::tuple<StableTensor, StableTensor> selective_backprop_keep_cuda(const StableTensor& losses,
                                                                    StableTensor history, StableTensor state,
                                                                    double beta, int64_t seed, int64_t step);

inline bool is_float_input(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// Checks values/offsets/ks (host data only) and returns the output length sum(ks).
// `what` names the selected quantity in messages ("scores", "weights").
inline int64_t check_segments(const char* op, const char* what, const StableTensor& values,
                              const std::vector<int64_t>& offsets, const std::vector<int64_t>& ks) {
  DD_CHECK(values.dim() == 1, op, what, " must be 1-D, got shape ", values.sizes());
  DD_CHECK(is_float_input(values.scalar_type()), op, what, " must be float32, float16 or bfloat16, got ",
           values.scalar_type());
  DD_CHECK(values.is_contiguous(), op, what, " must be contiguous");
  const int64_t n = values.numel();
  DD_CHECK(!offsets.empty() && offsets.front() == 0 && offsets.back() == n, op,
           "offsets must start at 0 and end at ", what, ".numel() = ", n, ", got ", offsets.size(),
           " offsets from ", offsets.empty() ? -1 : offsets.front(), " to ", offsets.empty() ? -1 : offsets.back());
  DD_CHECK(ks.size() + 1 == offsets.size(), op, "need one k per segment: ", offsets.size() - 1,
           " segments, got ", ks.size(), " ks");
  int64_t total = 0;
  for (size_t g = 0; g < ks.size(); ++g) {
    const int64_t size = offsets[g + 1] - offsets[g];
    DD_CHECK(size >= 0, op, "offsets must be non-decreasing, got offsets[", g, "] = ", offsets[g], " > offsets[",
             g + 1, "] = ", offsets[g + 1]);
    DD_CHECK(size < (int64_t{1} << 32), op, "segment ", g, " has ", size, " elements; at most 2^32 - 1 supported");
    DD_CHECK(ks[g] >= 0 && ks[g] <= size, op, "k = ", ks[g], " for segment ", g, " of ", size,
             " elements; need 0 <= k <= segment size");
    total += ks[g];
  }
  return total;
}

inline void check_history(const char* op, const StableTensor& losses, const StableTensor& history,
                          const StableTensor& state, double beta) {
  DD_CHECK(losses.dim() == 1 && losses.scalar_type() == ScalarType::Float && losses.is_contiguous(), op,
           "losses must be a contiguous 1-D float32 tensor, got shape ", losses.sizes(), " and ",
           losses.scalar_type());
  DD_CHECK(history.dim() == 1 && history.numel() >= 1 && history.scalar_type() == ScalarType::Float &&
               history.is_contiguous(),
           op, "history must be a non-empty contiguous 1-D float32 tensor, got shape ", history.sizes(), " and ",
           history.scalar_type());
  DD_CHECK(history.numel() < (int64_t{1} << 24), op, "history length ", history.numel(), " exceeds 2^24");
  DD_CHECK(state.dim() == 1 && state.numel() == 2 && state.scalar_type() == ScalarType::Long, op,
           "state must be int64 [2] (next write position, filled count), got shape ", state.sizes(), " and ",
           state.scalar_type());
  DD_CHECK(history.device() == losses.device() && state.device() == losses.device(), op,
           "losses, history and state must be on one device");
  DD_CHECK(beta >= 0.0, op, "beta must be >= 0, got ", beta);
}

}  // namespace datadiet
