// datadiet::per_sample_grad_sqnorm on CPU. A work item (grad_norm_math.h) is one sample, one
// group and kItemRows rows of its gradient M = Gᵀ A ([pg, dg]) — or, for groups narrower than a
// register tile (depthwise convolutions), the whole group as pg · dg dot products over T. The item packs its slice of A
// ([T, dg], columns padded to whole vectors) and of G (kRows columns at a time, interleaved)
// into per-thread buffers in the accumulation type, then forms M in register tiles of kRows
// rows × kCols vectors with broadcast-FMA over T — T in chunks of kChunkT, the tile parked in
// a per-thread [kItemRows, dg] buffer between chunks so the A chunk stays in cache — and
// returns Σ M². Neither the [B, p, d] gradients nor a [B, T, T] Gram matrix is ever formed.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/dispatch.h"
#include "common/simd_cpu.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/grad_norm/grad_norm_math.h"

namespace datadiet {
namespace {

constexpr int kRows = 8;            // rows of M per register tile (8 × 2 vectors: 16 accumulators)
constexpr int kCols = 2;            // vectors of M's columns per register tile
constexpr int64_t kItemRows = 64;   // rows of M per work item (a multiple of kRows)
constexpr int64_t kChunkT = 256;    // rows of A / G per pass over a tile
constexpr int64_t kDotChunkT = 1024;  // rows per pass of the narrow-group path
static_assert(kItemRows % kRows == 0, "a work item holds whole register tiles");

template <typename S>
struct Vec;
template <>
struct Vec<float> {
  using type = simd::vf16;
  static constexpr int lanes = 16;
};
template <>
struct Vec<double> {
  using type = simd::vd8;
  static constexpr int lanes = 8;
};

template <typename V, typename S>
inline V load(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename S>
inline void store(S* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// A as a strided [T, d] matrix of one sample (per_sample_grad_sqnorm).
template <typename T>
struct RowsSource {
  static constexpr bool kNarrowPacks = true;  // its narrow path packs columns
  const T* a;
  grad_norm::Strides s;

  // dst[t · dst_t + c · dst_c] = A[t0 + t, col0 + c] for t < tn, c < n, read in memory order.
  template <typename S>
  void pack(int64_t t0, int64_t tn, int64_t col0, int64_t n, S* dst, int64_t dst_t, int64_t dst_c) const {
    const T* a0 = a + t0 * s.row + col0 * s.col;
    if (std::abs(s.row) < std::abs(s.col)) {  // a column is contiguous over T (a transposed unfold)
      for (int64_t c = 0; c < n; ++c)
        for (int64_t t = 0; t < tn; ++t) dst[t * dst_t + c * dst_c] = static_cast<S>(a0[t * s.row + c * s.col]);
    } else {
      for (int64_t t = 0; t < tn; ++t)
        for (int64_t c = 0; c < n; ++c) dst[t * dst_t + c * dst_c] = static_cast<S>(a0[t * s.row + c * s.col]);
    }
  }
};

// A as the unfolded patches of one sample's convolution input (per_sample_conv_grad_sqnorm):
// gathered column by column, so consecutive output positions read neighbouring pixels.
template <typename T>
struct PatchSource {
  static constexpr bool kNarrowPacks = false;  // its narrow path reads the input in place
  const T* x;
  grad_norm::ConvGeometry geo;

  template <typename S>
  void pack(int64_t t0, int64_t tn, int64_t col0, int64_t n, S* dst, int64_t dst_t, int64_t dst_c) const {
    const grad_norm::ConvGeometry& q = geo;
    const int64_t kk = q.kh * q.kw;
    for (int64_t c = 0; c < n; ++c) {
      const int64_t cc = col0 + c, tap = cc % kk;
      const T* channel = x + (cc / kk) * q.sc;
      const int64_t dy = (tap / q.kw) * q.dh - q.ph, dx = (tap % q.kw) * q.dw - q.pw;
      int64_t oh = t0 / q.Wo, ow = t0 % q.Wo;
      for (int64_t t = 0; t < tn; ++t) {
        const int64_t y = oh * q.sh + dy, xx = ow * q.sw + dx;
        const bool inside = y >= 0 && y < q.H && xx >= 0 && xx < q.W;
        dst[t * dst_t + c * dst_c] = inside ? static_cast<S>(channel[y * q.sy + xx * q.sx]) : S(0);
        if (++ow == q.Wo) {
          ow = 0;
          ++oh;
        }
      }
    }
  }
};

// Σ M² for M = rows [row0, row0 + rows) of the group's Gᵀ A, columns [col0, col0 + dg).
template <typename T, typename S, typename Source>
S item_sqnorm(const Source& src, const T* g, grad_norm::Strides gs, int64_t Tn, int64_t dg, int64_t col0, int64_t row0,
              int64_t rows, std::vector<S>& apack, std::vector<S>& gpack, std::vector<S>& tile) {
  using V = typename Vec<S>::type;
  constexpr int L = Vec<S>::lanes, W = kCols * L;
  const int64_t dgp = grad_norm::ceil_div(dg, W) * W;
  const int64_t blocks = grad_norm::ceil_div(rows, kRows);
  std::fill(tile.begin(), tile.begin() + blocks * kRows * dgp, S(0));
  for (int64_t t0 = 0; t0 < Tn; t0 += kChunkT) {
    const int64_t tn = std::min(kChunkT, Tn - t0);
    src.pack(t0, tn, col0, dg, apack.data(), dgp, 1);
    for (int64_t t = 0; t < tn; ++t) std::fill(apack.data() + t * dgp + dg, apack.data() + (t + 1) * dgp, S(0));
    const T* g0 = g + t0 * gs.row + row0 * gs.col;
    const bool g_rows_outer = std::abs(gs.row) >= std::abs(gs.col);
    for (int64_t rb = 0; rb < blocks; ++rb) {
      S* dst = gpack.data() + rb * tn * kRows;
      for (int r = 0; r < kRows; ++r) {
        const int64_t rr = rb * kRows + r;
        if (rr >= rows) {
          for (int64_t t = 0; t < tn; ++t) dst[t * kRows + r] = S(0);
        } else if (!g_rows_outer) {
          for (int64_t t = 0; t < tn; ++t) dst[t * kRows + r] = static_cast<S>(g0[t * gs.row + rr * gs.col]);
        }
      }
      if (g_rows_outer)
        for (int64_t t = 0; t < tn; ++t)
          for (int r = 0; r < kRows && rb * kRows + r < rows; ++r)
            dst[t * kRows + r] = static_cast<S>(g0[t * gs.row + (rb * kRows + r) * gs.col]);
    }
    for (int64_t c0 = 0; c0 < dgp; c0 += W) {
      for (int64_t rb = 0; rb < blocks; ++rb) {
        S* out = tile.data() + rb * kRows * dgp + c0;
        V acc[kRows][kCols];
        for (int r = 0; r < kRows; ++r)
          for (int c = 0; c < kCols; ++c) acc[r][c] = load<V>(out + r * dgp + c * L);
        const S* gp = gpack.data() + rb * tn * kRows;
        const S* ap = apack.data() + c0;
        for (int64_t t = 0; t < tn; ++t) {
          V av[kCols];
          for (int c = 0; c < kCols; ++c) av[c] = load<V>(ap + t * dgp + c * L);
          for (int r = 0; r < kRows; ++r) {
            const S s = gp[t * kRows + r];
            for (int c = 0; c < kCols; ++c) acc[r][c] += s * av[c];
          }
        }
        for (int r = 0; r < kRows; ++r)
          for (int c = 0; c < kCols; ++c) store(out + r * dgp + c * L, acc[r][c]);
      }
    }
  }
  V sq{};
  const S* m = tile.data();
  for (int64_t j = 0; j < blocks * kRows * dgp; j += L) {
    const V v = load<V>(m + j);
    sq += v * v;
  }
  S sum = 0;
  for (int l = 0; l < L; ++l) sum += sq[l];
  return sum;
}

// Groups narrower than a register tile (pg < kRows: depthwise convolutions have pg = 1): the pg · dg
// entries of M are dot products over T of G's and A's columns, packed contiguous over T in
// chunks of kDotChunkT.
template <typename T, typename S, typename Source>
S narrow_sqnorm(const Source& src, const T* g, grad_norm::Strides gs, int64_t Tn, int64_t dg, int64_t pg, int64_t col0,
                int64_t row0, std::vector<S>& acols, std::vector<S>& gcols, std::vector<S>& m) {
  std::fill(m.begin(), m.begin() + pg * dg, S(0));
  for (int64_t t0 = 0; t0 < Tn; t0 += kDotChunkT) {
    const int64_t tn = std::min(kDotChunkT, Tn - t0);
    src.pack(t0, tn, col0, dg, acols.data(), 1, tn);
    for (int64_t r = 0; r < pg; ++r)
      for (int64_t t = 0; t < tn; ++t) gcols[r * tn + t] = static_cast<S>(g[(t0 + t) * gs.row + (row0 + r) * gs.col]);
    for (int64_t r = 0; r < pg; ++r)
      for (int64_t c = 0; c < dg; ++c) m[r * dg + c] += simd::dot(gcols.data() + r * tn, acols.data() + c * tn, tn);
  }
  S sum = 0;
  for (int64_t j = 0; j < pg * dg; ++j) sum += m[j] * m[j];
  return sum;
}

// The narrow path of a convolution (depthwise: pg = 1) without packing: each entry of M is a sum,
// over the output rows, of a product of a row of g and the input row under that kernel tap, over
// the output columns whose tap falls inside the input — contiguous runs when the stride is 1.
template <typename T, typename S>
S narrow_sqnorm(const PatchSource<T>& src, const T* g, grad_norm::Strides gs, int64_t, int64_t dg, int64_t pg,
                int64_t col0, int64_t row0, std::vector<S>&, std::vector<S>&, std::vector<S>&) {
  const grad_norm::ConvGeometry& q = src.geo;
  const int64_t kk = q.kh * q.kw;
  S sum = 0;
  for (int64_t r = 0; r < pg; ++r) {
    const T* gr = g + (row0 + r) * gs.col;
    for (int64_t c = 0; c < dg; ++c) {
      const int64_t cc = col0 + c, tap = cc % kk;
      const T* channel = src.x + (cc / kk) * q.sc;
      const int64_t dy = (tap / q.kw) * q.dh - q.ph, dx = (tap % q.kw) * q.dw - q.pw;
      // output columns ow with 0 <= ow·sw + dx < W
      const int64_t lo = dx >= 0 ? 0 : (-dx + q.sw - 1) / q.sw;
      const int64_t hi = std::min(q.Wo, q.W - dx <= 0 ? int64_t{0} : (q.W - 1 - dx) / q.sw + 1);
      S m = 0;
      for (int64_t oh = 0; oh < q.Ho && lo < hi; ++oh) {
        const int64_t y = oh * q.sh + dy;
        if (y < 0 || y >= q.H) continue;
        const T* grow = gr + (oh * q.Wo + lo) * gs.row;
        const T* xrow = channel + y * q.sy + (lo * q.sw + dx) * q.sx;  // the input under column lo
        if constexpr (std::is_same_v<T, S>) {
          if (gs.row == 1 && q.sw * q.sx == 1) {
            m += simd::dot(grow, xrow, hi - lo);
            continue;
          }
        }
        for (int64_t j = 0; j < hi - lo; ++j)
          m += static_cast<S>(grow[j * gs.row]) * static_cast<S>(xrow[j * q.sw * q.sx]);
      }
      sum += m * m;
    }
  }
  return sum;
}

// out[i] = Σ over sample i's work items; source_of(i) is the sample's A source; g is [B, T, p]
// through its strides.
template <typename T, typename SourceOf>
void run(SourceOf source_of, int64_t B, int64_t Tn, int64_t d, const T* gp, grad_norm::Strides gs, int64_t p, int64_t groups,
         StableTensor& out) {
  using S = typename grad_norm::Acc<T>::type;
  constexpr int W = kCols * Vec<S>::lanes;
  const int64_t dg = d / groups, pg = p / groups;
  S* result = out.mutable_data_ptr<S>();
  if (Tn == 0 || dg == 0 || pg == 0) {
    std::fill(result, result + B, S(0));
    return;
  }
  const bool narrow = pg < kRows;
  const grad_norm::Tiling tiling = grad_norm::make_tiling(B, groups, pg, dg, narrow ? pg : kItemRows, dg);
  const int64_t items = tiling.items(), dgp = grad_norm::ceil_div(dg, W) * W;
  std::vector<S> partial(items);
  const int64_t chunk = std::min(narrow ? kDotChunkT : kChunkT, Tn);
  // Narrow items can be tiny (a depthwise channel of one sample): hand them out in runs.
  const int64_t grain = narrow ? std::max<int64_t>(1, items / (16 * omp_get_max_threads())) : 1;
#pragma omp parallel if (items > 1)
  {
    // Narrow path: A's and G's columns and M (none for a convolution). Tiled path: packed A and G,
    // and the M rows.
    using Source = decltype(source_of(int64_t{0}));
    const bool packs = !narrow || Source::kNarrowPacks;
    std::vector<S> apack(packs ? chunk * (narrow ? dg : dgp) : 0), gpack(packs ? chunk * (narrow ? pg : kItemRows) : 0),
        tile(packs ? (narrow ? pg * dg : kItemRows * dgp) : 0);
#pragma omp for schedule(dynamic, grain)
    for (int64_t item = 0; item < items; ++item) {
      const grad_norm::Item it = grad_norm::item_of(tiling, item);
      const auto src = source_of(it.sample);
      const T* gi = gp + it.sample * gs.sample;
      if (narrow) {
        partial[item] = narrow_sqnorm<T, S>(src, gi, gs, Tn, dg, pg, it.group * dg, it.group * pg, apack, gpack, tile);
      } else {
        const int64_t row0 = it.tile_p * kItemRows, rows = std::min(kItemRows, pg - row0);
        partial[item] = item_sqnorm<T, S>(src, gi, gs, Tn, dg, it.group * dg, it.group * pg + row0, rows, apack,
                                          gpack, tile);
      }
    }
  }
  const int64_t per = tiling.per_sample();
  for (int64_t i = 0; i < B; ++i) {
    S sum = 0;
    for (int64_t j = 0; j < per; ++j) sum += partial[i * per + j];
    result[i] = sum;
  }
}

}  // namespace

StableTensor per_sample_grad_sqnorm_cpu(const StableTensor& a, const StableTensor& g, int64_t groups) {
  check_grad_sqnorm_args(a, g, groups);
  DD_CHECK(a.is_cpu(), "per_sample_grad_sqnorm", "the CPU kernel got tensors on another device");
  StableTensor out = torch::stable::new_empty(a, {a.size(0)}, grad_sqnorm_out_type(a.scalar_type()));
  if (a.size(0) == 0) return out;
  const grad_norm::Strides as{a.stride(0), a.stride(1), a.stride(2)}, gs{g.stride(0), g.stride(1), g.stride(2)};
  dispatch_float_or_double(a.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* ap = a.const_data_ptr<T>();
    run<T>([&](int64_t i) { return RowsSource<T>{ap + i * as.sample, as}; }, a.size(0), a.size(1), a.size(2),
           g.const_data_ptr<T>(), gs, g.size(2), groups, out);
  });
  return out;
}

StableTensor per_sample_conv_grad_sqnorm_cpu(const StableTensor& x, const StableTensor& g,
                                             std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                                             std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                             int64_t groups) {
  const grad_norm::ConvGeometry geo = check_conv_grad_sqnorm_args(x, g, kernel_size, stride, padding, dilation, groups);
  DD_CHECK(x.is_cpu(), "per_sample_conv_grad_sqnorm", "the CPU kernel got tensors on another device");
  StableTensor out = torch::stable::new_empty(x, {x.size(0)}, grad_sqnorm_out_type(x.scalar_type()));
  if (x.size(0) == 0) return out;
  // g [B, O, Ho, Wo] read as G [B, T = Ho·Wo, O]: its spatial dims must flatten to one stride.
  const grad_norm::Strides gs{g.stride(0), conv_t_stride(g), g.stride(1)};
  const int64_t d = x.size(1) * geo.kh * geo.kw;
  dispatch_float_or_double(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    const int64_t sb = x.stride(0);
    run<T>([&](int64_t i) { return PatchSource<T>{xp + i * sb, geo}; }, x.size(0), geo.Ho * geo.Wo, d,
           g.const_data_ptr<T>(), gs, g.size(1), groups, out);
  });
  return out;
}

}  // namespace datadiet
