// datadiet::per_sample_grad_sqnorm — host-side declarations and argument checks shared by the
// CPU (.cpp) and CUDA (.cu) kernels. The schema lives in registration.cpp.
//
//   per_sample_grad_sqnorm(a [B, T, d], g [B, T, p], groups) -> [B]
//   out_i = Σ_groups ‖G_{i,k}ᵀ A_{i,k}‖²_F, A_{i,k} = a[i, :, k·d/groups : (k+1)·d/groups] (and G
//   likewise): the squared Frobenius norm of a layer's per-sample weight gradient, summed over
//   the groups of a grouped convolution. The [p, d] gradient is formed tile by tile in
//   registers / shared memory; only squared sums leave the kernel.
//
// a and g share one dtype (float32, float64, float16, bfloat16) and one device, any strides.
// Accumulation and the output are float64 for float64 inputs, float32 otherwise.
#pragma once

#include <cstdint>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;

StableTensor per_sample_grad_sqnorm_cpu(const StableTensor& a, const StableTensor& g, int64_t groups);
StableTensor per_sample_grad_sqnorm_cuda(const StableTensor& a, const StableTensor& g, int64_t groups);

inline bool is_grad_norm_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// Shape, dtype and device checks (no data is read).
inline void check_grad_sqnorm_args(const StableTensor& a, const StableTensor& g, int64_t groups) {
  const char* op = "per_sample_grad_sqnorm";
  DD_CHECK(a.dim() == 3, op, "a must be 3-D [B, T, d], got shape ", a.sizes());
  DD_CHECK(g.dim() == 3, op, "g must be 3-D [B, T, p], got shape ", g.sizes());
  DD_CHECK(a.size(0) == g.size(0) && a.size(1) == g.size(1), op, "a ", a.sizes(), " and g ", g.sizes(),
           " must agree in B and T");
  DD_CHECK(is_grad_norm_dtype(a.scalar_type()), op, "a must be float32, float64, float16 or bfloat16, got ",
           a.scalar_type());
  DD_CHECK(g.scalar_type() == a.scalar_type(), op, "g (", g.scalar_type(), ") must have a's dtype (",
           a.scalar_type(), ")");
  DD_CHECK(g.device() == a.device(), op, "g is on another device than a");
  DD_CHECK(groups >= 1, op, "groups must be >= 1, got ", groups);
  DD_CHECK(a.size(2) % groups == 0 && g.size(2) % groups == 0, op, "groups=", groups, " must divide d=", a.size(2),
           " and p=", g.size(2));
}

inline ScalarType grad_sqnorm_out_type(ScalarType input) {
  return input == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

}  // namespace datadiet
