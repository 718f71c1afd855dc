// datadiet::per_sample_grad_sqnorm on CUDA. One block per work item (grad_norm_math.h): a
// kTile × kTile tile of one sample's per-group gradient M = Gᵀ A, built over T in chunks of
// kTileT rows staged in shared memory, each of the 256 threads holding a 4 × 4 register tile
// (the classic SGEMM blocking). Only the tile's squared sum is written (partial[item]); a
// second launch sums each sample's partials in item order, so results are deterministic.
// Accumulation is float64 for float64 inputs, float32 otherwise. No host synchronisation.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/cuda_stream.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/grad_norm/grad_norm_math.h"

namespace datadiet {
namespace {

constexpr int kTile = 64;    // rows and columns of M per block
constexpr int kTileT = 16;   // rows of A / G per shared-memory stage
constexpr int kThreads = 256;
constexpr int kPer = kTile / 16;  // each thread: kPer × kPer entries of the tile

struct Strides {
  int64_t sample, row, col;
};

template <typename T, typename S>
__global__ void tile_sqnorm_kernel(const T* __restrict__ a, Strides as, const T* __restrict__ g, Strides gs,
                                   int64_t Tn, int64_t dg, int64_t pg, grad_norm::Tiling tiling,
                                   S* __restrict__ partial) {
  __shared__ S a_s[kTileT][kTile];
  __shared__ S g_s[kTileT][kTile];
  __shared__ S red[kThreads];
  const grad_norm::Item it = grad_norm::item_of(tiling, blockIdx.x);
  const T* ai = a + it.sample * as.sample;
  const T* gi = g + it.sample * gs.sample;
  const int64_t col0 = it.group * dg + it.tile_d * kTile, row0 = it.group * pg + it.tile_p * kTile;
  const int64_t cols = min(static_cast<int64_t>(kTile), dg - it.tile_d * kTile);
  const int64_t rows = min(static_cast<int64_t>(kTile), pg - it.tile_p * kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  S acc[kPer][kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r)
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[r][c] = S(0);
  for (int64_t t0 = 0; t0 < Tn; t0 += kTileT) {
    for (int e = threadIdx.x; e < kTileT * kTile; e += kThreads) {
      const int tt = e / kTile, c = e % kTile;
      const bool live = t0 + tt < Tn;
      a_s[tt][c] = live && c < cols ? static_cast<S>(ai[(t0 + tt) * as.row + (col0 + c) * as.col]) : S(0);
      g_s[tt][c] = live && c < rows ? static_cast<S>(gi[(t0 + tt) * gs.row + (row0 + c) * gs.col]) : S(0);
    }
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kTileT; ++tt) {
      S gv[kPer], av[kPer];
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        gv[k] = g_s[tt][ty + 16 * k];
        av[k] = a_s[tt][tx + 16 * k];
      }
#pragma unroll
      for (int r = 0; r < kPer; ++r)
#pragma unroll
        for (int c = 0; c < kPer; ++c) acc[r][c] += gv[r] * av[c];
    }
    __syncthreads();
  }
  S sq = S(0);
#pragma unroll
  for (int r = 0; r < kPer; ++r)
#pragma unroll
    for (int c = 0; c < kPer; ++c) sq += acc[r][c] * acc[r][c];
  red[threadIdx.x] = sq;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

// out[i] = Σ_j partial[i · per + j], j in order.
template <typename S>
__global__ void sum_partials_kernel(const S* __restrict__ partial, int64_t per, int64_t B, S* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  S sum = S(0);
  for (int64_t j = 0; j < per; ++j) sum += partial[i * per + j];
  out[i] = sum;
}

template <typename T>
void run(const StableTensor& a, const StableTensor& g, int64_t groups, StableTensor& out, cudaStream_t stream) {
  using S = typename grad_norm::Acc<T>::type;
  const int64_t B = a.size(0), Tn = a.size(1), dg = a.size(2) / groups, pg = g.size(2) / groups;
  const grad_norm::Tiling tiling = grad_norm::make_tiling(B, groups, pg, dg, kTile, kTile);
  const int64_t items = tiling.items();
  DD_CHECK(items <= 0x7fffffff, "per_sample_grad_sqnorm", "too many tiles (", items, ") for one launch");
  StableTensor partial = torch::stable::new_empty(a, {items > 0 ? items : 1}, out.scalar_type());
  S* part = partial.mutable_data_ptr<S>();
  if (items > 0) {
    tile_sqnorm_kernel<T, S><<<static_cast<unsigned>(items), kThreads, 0, stream>>>(
        a.const_data_ptr<T>(), Strides{a.stride(0), a.stride(1), a.stride(2)}, g.const_data_ptr<T>(),
        Strides{g.stride(0), g.stride(1), g.stride(2)}, Tn, dg, pg, tiling, part);
    check_launch("per_sample_grad_sqnorm");
  }
  const int64_t blocks = grad_norm::ceil_div(B, 256);
  sum_partials_kernel<S><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(part, tiling.per_sample(), B,
                                                                            out.mutable_data_ptr<S>());
  check_launch("per_sample_grad_sqnorm");
}

}  // namespace

StableTensor per_sample_grad_sqnorm_cuda(const StableTensor& a, const StableTensor& g, int64_t groups) {
  check_grad_sqnorm_args(a, g, groups);
  DD_CHECK(a.is_cuda(), "per_sample_grad_sqnorm", "the CUDA kernel got tensors on another device");
  const auto device_index = a.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  StableTensor out = torch::stable::new_empty(a, {a.size(0)}, grad_sqnorm_out_type(a.scalar_type()));
  if (a.size(0) == 0) return out;
  switch (a.scalar_type()) {
    case ScalarType::Double:
      run<double>(a, g, groups, out, stream);
      break;
    case ScalarType::Float:
      run<float>(a, g, groups, out, stream);
      break;
    case ScalarType::Half:
      run<c10::Half>(a, g, groups, out, stream);
      break;
    default:
      run<c10::BFloat16>(a, g, groups, out, stream);
  }
  return out;
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("per_sample_grad_sqnorm", TORCH_BOX(&datadiet::per_sample_grad_sqnorm_cuda));
}
