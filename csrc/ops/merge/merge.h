// datadiet model-merging ops over lists of tensors — host-side declarations and argument
// checks. Schemas in schemas.cpp.
//
//   average_(dst[T], sources[M·T] (model-major), weights[M]):  dst_t ← Σ_m w_m · src_{m,t}
//   lerp_(dst[T], other[T], alpha):                            dst_t ← dst_t + α (other_t − dst_t)
//   magnitude_prune_(tensors[T], masks[T or 0], keep): keeps the keep[0] largest |x| over the
//       whole list (global scope, one count) or keep[t] of each tensor (per-tensor scope, T
//       counts), zeroes the rest in place; equal magnitudes are kept lower index first (list
//       order, then flat index). Writes the keep masks (bool, the tensors' shapes) when given.
//
// The kernels take float32, float16 and bfloat16 tensors, contiguous, all on one device;
// arithmetic is float32 (fp16/bf16 values are read as float and rounded once on store).
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;

void average_cpu(std::vector<StableTensor> dst, std::vector<StableTensor> sources, std::vector<double> weights);
void lerp_cpu(std::vector<StableTensor> dst, std::vector<StableTensor> other, double alpha);
void magnitude_prune_cpu(std::vector<StableTensor> tensors, std::vector<StableTensor> masks,
                         std::vector<int64_t> keep);
void average_cuda(std::vector<StableTensor> dst, std::vector<StableTensor> sources, std::vector<double> weights);
void lerp_cuda(std::vector<StableTensor> dst, std::vector<StableTensor> other, double alpha);
void magnitude_prune_cuda(std::vector<StableTensor> tensors, std::vector<StableTensor> masks,
                          std::vector<int64_t> keep);

inline bool is_merge_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// Every tensor: contiguous, float32/16/bf16, on the first one's device.
inline void check_merge_list(const char* op, const char* name, const std::vector<StableTensor>& ts) {
  for (size_t i = 0; i < ts.size(); ++i) {
    DD_CHECK(is_merge_dtype(ts[i].scalar_type()) && ts[i].is_contiguous(), op, name, "[", i,
             "] must be a contiguous float32, float16 or bfloat16 tensor, got ", ts[i].scalar_type(),
             ts[i].is_contiguous() ? "" : " (non-contiguous)");
    DD_CHECK(ts[i].device() == ts[0].device(), op, name, "[", i, "] is on another device than ", name, "[0]");
  }
}

// `other` holds models of `dst`'s layout back to back: other[m·T + t] matches dst[t].
inline void check_same_layout(const char* op, const std::vector<StableTensor>& dst,
                              const std::vector<StableTensor>& other, const char* other_name) {
  check_merge_list(op, "dst", dst);
  check_merge_list(op, other_name, other);
  const size_t T = dst.size();
  DD_CHECK(T > 0 ? other.size() % T == 0 : other.empty(), op, other_name, " must hold whole models of ", T,
           " tensors, got ", other.size());
  for (size_t i = 0; i < other.size(); ++i) {
    const StableTensor& d = dst[i % T];
    DD_CHECK(other[i].sizes().equals(d.sizes()) && other[i].scalar_type() == d.scalar_type(), op, other_name, "[",
             i, "] (model ", i / T, ", tensor ", i % T, ") has shape ", other[i].sizes(), " and ",
             other[i].scalar_type(), " but dst[", i % T, "] has ", d.sizes(), " and ", d.scalar_type());
    DD_CHECK(other[i].device() == d.device(), op, other_name, "[", i, "] is on another device than dst");
  }
}

inline void check_average_args(const std::vector<StableTensor>& dst, const std::vector<StableTensor>& sources,
                               const std::vector<double>& weights) {
  const char* op = "average_";
  check_same_layout(op, dst, sources, "sources");
  const size_t models = dst.empty() ? weights.size() : sources.size() / dst.size();
  DD_CHECK(weights.size() == models, op, "got ", weights.size(), " weights for ", models, " models");
  DD_CHECK(dst.empty() || models > 0, op, "needs at least one source model for ", dst.size(),
           " destination tensors, got none");
}

// Per-tensor (keep.size() == T) or global (one count) kept counts, each within its size.
inline void check_prune_args(const std::vector<StableTensor>& tensors, const std::vector<StableTensor>& masks,
                             const std::vector<int64_t>& keep) {
  const char* op = "magnitude_prune_";
  check_merge_list(op, "tensors", tensors);
  DD_CHECK(masks.empty() || masks.size() == tensors.size(), op, "masks must be empty or one per tensor (",
           tensors.size(), "), got ", masks.size());
  for (size_t i = 0; i < masks.size(); ++i)
    DD_CHECK(masks[i].scalar_type() == ScalarType::Bool && masks[i].is_contiguous() &&
                 masks[i].sizes().equals(tensors[i].sizes()) && masks[i].device() == tensors[i].device(),
             op, "masks[", i, "] must be a contiguous bool tensor shaped like tensors[", i, "] ", tensors[i].sizes(),
             " on its device, got ", masks[i].scalar_type(), " ", masks[i].sizes());
  DD_CHECK(keep.size() == 1 || keep.size() == tensors.size(), op, "keep must hold one count (global) or one per "
           "tensor (", tensors.size(), "), got ", keep.size());
  int64_t total = 0;
  for (const StableTensor& t : tensors) total += t.numel();
  for (size_t g = 0; g < keep.size(); ++g) {
    const int64_t size = keep.size() == 1 ? total : tensors[g].numel();
    DD_CHECK(keep[g] >= 0 && keep[g] <= size, op, "keep[", g, "] = ", keep[g], " must be in [0, ", size, "]");
  }
}

}  // namespace datadiet
