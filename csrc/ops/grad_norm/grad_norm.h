// datadiet::per_sample_grad_sqnorm — host-side declarations and argument checks shared by the
// CPU (.cpp) and CUDA (.cu) kernels. The schema lives in schemas.cpp.
//
//   per_sample_grad_sqnorm(a [B, T, d], g [B, T, p], groups) -> [B]
//   out_i = Σ_groups ‖G_{i,k}ᵀ A_{i,k}‖²_F, A_{i,k} = a[i, :, k·d/groups : (k+1)·d/groups] (and G
//   likewise): the squared Frobenius norm of a layer's per-sample weight gradient, summed over
//   the groups of a grouped convolution. The [p, d] gradient is formed tile by tile in
//   registers / shared memory; only squared sums leave the kernel.
//
//   per_sample_conv_grad_sqnorm(x [B, C, H, W], g [B, O, Ho, Wo], kernel_size, stride, padding,
//                               dilation, groups) -> [B]
//   the same for a Conv2d, with A the unfolded input (F.unfold's patches, zero padding `padding`)
//   gathered from x inside the kernel instead of materialised (9× the input for a 3×3 kernel).
//
// The tensors share one dtype (float32, float64, float16, bfloat16) and one device, any strides
// (g's spatial dims must flatten to one stride: contiguous or channels-last). Accumulation and
// the output are float64 for float64 inputs, float32 otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "common/check.h"
#include "ops/grad_norm/grad_norm_math.h"

namespace datadiet {

using torch::headeronly::ScalarType;
using StableTensor = torch::stable::Tensor;

StableTensor per_sample_grad_sqnorm_cpu(const StableTensor& a, const StableTensor& g, int64_t groups);
StableTensor per_sample_grad_sqnorm_cuda(const StableTensor& a, const StableTensor& g, int64_t groups);
StableTensor per_sample_conv_grad_sqnorm_cpu(const StableTensor& x, const StableTensor& g,
                                             std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                                             std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                             int64_t groups);
StableTensor per_sample_conv_grad_sqnorm_cuda(const StableTensor& x, const StableTensor& g,
                                              std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                                              std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                              int64_t groups);

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

// Checks of per_sample_conv_grad_sqnorm's arguments (shapes only); returns the geometry.
inline grad_norm::ConvGeometry check_conv_grad_sqnorm_args(const StableTensor& x, const StableTensor& g,
                                                           const std::vector<int64_t>& kernel_size,
                                                           const std::vector<int64_t>& stride,
                                                           const std::vector<int64_t>& padding,
                                                           const std::vector<int64_t>& dilation, int64_t groups) {
  const char* op = "per_sample_conv_grad_sqnorm";
  DD_CHECK(x.dim() == 4, op, "x must be 4-D [B, C, H, W], got shape ", x.sizes());
  DD_CHECK(g.dim() == 4, op, "g must be 4-D [B, O, Ho, Wo], got shape ", g.sizes());
  DD_CHECK(g.size(0) == x.size(0), op, "x ", x.sizes(), " and g ", g.sizes(), " must agree in B");
  DD_CHECK(is_grad_norm_dtype(x.scalar_type()), op, "x must be float32, float64, float16 or bfloat16, got ",
           x.scalar_type());
  DD_CHECK(g.scalar_type() == x.scalar_type(), op, "g (", g.scalar_type(), ") must have x's dtype (", x.scalar_type(),
           ")");
  DD_CHECK(g.device() == x.device(), op, "g is on another device than x");
  for (const auto* v : {&kernel_size, &stride, &padding, &dilation})
    DD_CHECK(v->size() == 2, op, "kernel_size, stride, padding and dilation must hold 2 values each");
  DD_CHECK(kernel_size[0] >= 1 && kernel_size[1] >= 1 && stride[0] >= 1 && stride[1] >= 1 && dilation[0] >= 1 &&
               dilation[1] >= 1 && padding[0] >= 0 && padding[1] >= 0,
           op, "kernel_size, stride and dilation must be >= 1 and padding >= 0");
  DD_CHECK(groups >= 1 && x.size(1) % groups == 0 && g.size(1) % groups == 0, op, "groups=", groups,
           " must be >= 1 and divide C=", x.size(1), " and O=", g.size(1));
  grad_norm::ConvGeometry q;
  q.H = x.size(2);
  q.W = x.size(3);
  q.kh = kernel_size[0];
  q.kw = kernel_size[1];
  q.sh = stride[0];
  q.sw = stride[1];
  q.ph = padding[0];
  q.pw = padding[1];
  q.dh = dilation[0];
  q.dw = dilation[1];
  DD_CHECK(q.H + 2 * q.ph >= q.dh * (q.kh - 1) + 1 && q.W + 2 * q.pw >= q.dw * (q.kw - 1) + 1, op, "the input ",
           x.sizes(), " (padded by ", q.ph, ", ", q.pw, ") is smaller than the dilated kernel");
  q.Ho = (q.H + 2 * q.ph - q.dh * (q.kh - 1) - 1) / q.sh + 1;
  q.Wo = (q.W + 2 * q.pw - q.dw * (q.kw - 1) - 1) / q.sw + 1;
  q.sc = x.stride(1);
  q.sy = x.stride(2);
  q.sx = x.stride(3);
  DD_CHECK(q.Ho >= 1 && q.Wo >= 1 && g.size(2) == q.Ho && g.size(3) == q.Wo, op, "g must have spatial shape [", q.Ho,
           ", ", q.Wo, "] for this x and geometry, got ", g.sizes());
  DD_CHECK(q.Ho == 1 || q.Wo == 1 || g.stride(2) == q.Wo * g.stride(3), op,
           "g's spatial dims must flatten to one stride (contiguous or channels-last), got row stride ",
           g.stride(2), " and column stride ", g.stride(3));
  return q;
}

// g [B, O, Ho, Wo] read as G [B, T = Ho·Wo, O]: the stride of t (a column's when Wo = 1).
inline int64_t conv_t_stride(const StableTensor& g) { return g.size(3) == 1 ? g.stride(2) : g.stride(3); }

inline ScalarType grad_sqnorm_out_type(ScalarType input) {
  return input == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

}  // namespace datadiet
