// datadiet::per_sample_grad_sqnorm and per_sample_conv_grad_sqnorm on CUDA (the second gathers A
// from the convolution input while staging it: no unfolded copy). One block per work item (grad_norm_math.h): a
// kTile × kTile tile of one sample's per-group gradient M = Gᵀ A, built over T in chunks of
// kTileT rows staged in shared memory, each of the 256 threads holding a 4 × 4 register tile
// (the classic SGEMM blocking). Only the tile's squared sum is written (partial[item]); a
// second launch sums each sample's partials in item order, so results are deterministic.
// Accumulation is float64 for float64 inputs, float32 otherwise. No host synchronisation.
//
// Staging is coalesced for either layout: each operand is read with consecutive threads along
// its smaller stride — down the rows t for NCHW (the convolution output gradient's Ho·Wo
// positions, the input's pixels), along the columns for channels-last or row-major [T, d] —
// into shared rows padded by two elements, so a warp's column-wise stores (16 rows × 2
// columns) hit 32 distinct banks. The
// convolution's (channel, tap) of each tile column and the output position of each staged row
// are decoded once per block / stage into shared memory, not per element (no 64-bit
// division in the inner loop).
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/dispatch.h"
#include "common/cuda_stream.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/grad_norm/grad_norm_math.h"

namespace datadiet {
namespace {

constexpr int kTile = 64;    // rows and columns of M per block
constexpr int kTileT = 16;   // rows of A / G per shared-memory stage
constexpr int kThreads = 256;
constexpr int kPer = kTile / 16;  // each thread: kPer × kPer entries of the tile

// A as a strided [T, d] matrix (per_sample_grad_sqnorm). Sources decode a tile's columns
// (`column`, once per block) and a stage's rows (`row`, once per stage) into their `Shared`
// tables; `at` reads A[t, col] through them.
template <typename T>
struct RowsSource {
  const T* a;
  grad_norm::Strides s;
  struct Shared {};
  __device__ const T* sample(int64_t i) const { return a + i * s.sample; }
  __device__ bool rows_fast() const { return s.row < s.col; }
  __device__ void column(Shared&, int, int64_t) const {}
  __device__ void row(Shared&, int, int64_t) const {}
  __device__ bool at(const Shared&, const T* ai, int, int64_t t, int, int64_t col, T& v) const {
    v = ai[t * s.row + col * s.col];
    return true;
  }
};

// A as a convolution input's unfolded patches, gathered (per_sample_conv_grad_sqnorm):
// column c = (channel ci, tap (ki, kj)) gives the channel's offset and the tap's displacement,
// row t = (oh, ow) the window's corner; A[t, c] is the pixel at their sum, 0 in the padding.
template <typename T>
struct PatchSource {
  const T* x;
  int64_t sample_stride;
  grad_norm::ConvGeometry geo;
  struct Shared {
    int64_t channel[kTile];
    int dy[kTile], dx[kTile], y[kTileT], x[kTileT];
  };
  __device__ const T* sample(int64_t i) const { return x + i * sample_stride; }
  __device__ bool rows_fast() const { return geo.sx < geo.sc; }  // NCHW: neighbouring pixels are adjacent
  __device__ void column(Shared& sh, int c, int64_t col) const {
    const int64_t kk = geo.kh * geo.kw, tap = col % kk;
    sh.channel[c] = (col / kk) * geo.sc;
    sh.dy[c] = static_cast<int>((tap / geo.kw) * geo.dh);
    sh.dx[c] = static_cast<int>((tap % geo.kw) * geo.dw);
  }
  __device__ void row(Shared& sh, int tt, int64_t t) const {
    sh.y[tt] = static_cast<int>((t / geo.Wo) * geo.sh - geo.ph);
    sh.x[tt] = static_cast<int>((t % geo.Wo) * geo.sw - geo.pw);
  }
  __device__ bool at(const Shared& sh, const T* xi, int tt, int64_t, int c, int64_t, T& v) const {
    const int y = sh.y[tt] + sh.dy[c], x = sh.x[tt] + sh.dx[c];
    if (y < 0 || y >= geo.H || x < 0 || x >= geo.W) return false;
    v = xi[sh.channel[c] + y * geo.sy + x * geo.sx];
    return true;
  }
};

// Element e of a kTileT × kTile stage as (row, column): consecutive e down the rows when
// `rows_fast`, else along the columns (the operand's smaller stride, for coalesced reads).
__device__ __forceinline__ void stage_slot(int e, bool rows_fast, int& tt, int& c) {
  if (rows_fast) {
    tt = e % kTileT, c = e / kTileT;
  } else {
    tt = e / kTile, c = e % kTile;
  }
}

template <typename T, typename S, typename Source>
__global__ void tile_sqnorm_kernel(Source src, const T* __restrict__ g, grad_norm::Strides gs, int64_t Tn, int64_t dg,
                                   int64_t pg, grad_norm::Tiling tiling, S* __restrict__ partial) {
  __shared__ S a_s[kTileT][kTile + 2];  // + 2: column-wise stores in distinct banks
  __shared__ S g_s[kTileT][kTile + 2];
  __shared__ S red[kThreads];
  __shared__ typename Source::Shared decoded;
  const grad_norm::Item it = grad_norm::item_of(tiling, blockIdx.x);
  const T* ai = src.sample(it.sample);
  const T* gi = g + it.sample * gs.sample;
  const int64_t col0 = it.group * dg + it.tile_d * kTile, row0 = it.group * pg + it.tile_p * kTile;
  const int64_t cols = min(static_cast<int64_t>(kTile), dg - it.tile_d * kTile);
  const int64_t rows = min(static_cast<int64_t>(kTile), pg - it.tile_p * kTile);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool a_rows_fast = src.rows_fast(), g_rows_fast = gs.row < gs.col;
  if (static_cast<int64_t>(threadIdx.x) < cols) src.column(decoded, threadIdx.x, col0 + threadIdx.x);
  S acc[kPer][kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r)
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[r][c] = S(0);
  for (int64_t t0 = 0; t0 < Tn; t0 += kTileT) {
    if (static_cast<int>(threadIdx.x) < kTileT && t0 + threadIdx.x < Tn) src.row(decoded, threadIdx.x, t0 + threadIdx.x);
    __syncthreads();  // the decoded rows (and, at the first stage, columns) are in place
    for (int e = threadIdx.x; e < kTileT * kTile; e += kThreads) {
      int tt, c;
      stage_slot(e, a_rows_fast, tt, c);
      T v;
      a_s[tt][c] = t0 + tt < Tn && c < cols && src.at(decoded, ai, tt, t0 + tt, c, col0 + c, v) ? static_cast<S>(v)
                                                                                                 : S(0);
      stage_slot(e, g_rows_fast, tt, c);
      g_s[tt][c] = t0 + tt < Tn && c < rows ? static_cast<S>(gi[(t0 + tt) * gs.row + (row0 + c) * gs.col]) : S(0);
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

template <typename T, typename Source>
void run(const Source& src, int64_t B, int64_t Tn, int64_t d, const T* gp, grad_norm::Strides gs, int64_t p, int64_t groups,
         StableTensor& out, cudaStream_t stream, const char* op) {
  using S = typename grad_norm::Acc<T>::type;
  const int64_t dg = d / groups, pg = p / groups;
  const grad_norm::Tiling tiling = grad_norm::make_tiling(B, groups, pg, dg, kTile, kTile);
  const int64_t items = tiling.items();
  DD_CHECK(items <= 0x7fffffff, op, "too many tiles (", items, ") for one launch");
  StableTensor partial = torch::stable::new_empty(out, {items > 0 ? items : 1}, out.scalar_type());
  S* part = partial.mutable_data_ptr<S>();
  if (items > 0 && Tn > 0) {
    tile_sqnorm_kernel<T, S, Source><<<static_cast<unsigned>(items), kThreads, 0, stream>>>(src, gp, gs, Tn, dg, pg,
                                                                                           tiling, part);
    check_launch(op);
  }
  const int64_t per = Tn > 0 ? tiling.per_sample() : 0;
  const int64_t blocks = grad_norm::ceil_div(B, 256);
  sum_partials_kernel<S><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(part, per, B, out.mutable_data_ptr<S>());
  check_launch(op);
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
  const grad_norm::Strides as{a.stride(0), a.stride(1), a.stride(2)}, gs{g.stride(0), g.stride(1), g.stride(2)};
  dispatch_float_or_double(a.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    run<T>(RowsSource<T>{a.const_data_ptr<T>(), as}, a.size(0), a.size(1), a.size(2), g.const_data_ptr<T>(), gs,
           g.size(2), groups, out, stream, "per_sample_grad_sqnorm");
  });
  return out;
}

StableTensor per_sample_conv_grad_sqnorm_cuda(const StableTensor& x, const StableTensor& g,
                                              std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                                              std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                              int64_t groups) {
  const grad_norm::ConvGeometry geo = check_conv_grad_sqnorm_args(x, g, kernel_size, stride, padding, dilation, groups);
  DD_CHECK(x.is_cuda(), "per_sample_conv_grad_sqnorm", "the CUDA kernel got tensors on another device");
  const auto device_index = x.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device_index);
  const cudaStream_t stream = current_stream(device_index);
  StableTensor out = torch::stable::new_empty(x, {x.size(0)}, grad_sqnorm_out_type(x.scalar_type()));
  if (x.size(0) == 0) return out;
  const grad_norm::Strides gs{g.stride(0), conv_t_stride(g), g.stride(1)};  // g read as [B, T = Ho·Wo, O]
  dispatch_float_or_double(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    run<T>(PatchSource<T>{x.const_data_ptr<T>(), x.stride(0), geo}, x.size(0), geo.Ho * geo.Wo,
           x.size(1) * geo.kh * geo.kw, g.const_data_ptr<T>(), gs, g.size(1), groups, out, stream,
           "per_sample_conv_grad_sqnorm");
  });
  return out;
}

}  // namespace datadiet

STABLE_TORCH_LIBRARY_IMPL(datadiet, CUDA, m) {
  m.impl("per_sample_grad_sqnorm", TORCH_BOX(&datadiet::per_sample_grad_sqnorm_cuda));
  m.impl("per_sample_conv_grad_sqnorm", TORCH_BOX(&datadiet::per_sample_conv_grad_sqnorm_cuda));
}
