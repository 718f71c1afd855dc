// datadiet::per_sample_grad_sqnorm on CPU. A work item (grad_norm_math.h) is one sample, one
// group and kItemRows rows of its gradient M = Gᵀ A ([pg, dg]). The item packs its slice of A
// ([T, dg], columns padded to whole vectors) and of G (kRows columns at a time, interleaved)
// into per-thread buffers in the accumulation type, then forms M in register tiles of kRows
// rows × kCols vectors with broadcast-FMA over T — T in chunks of kChunkT, the tile parked in
// a per-thread [kItemRows, dg] buffer between chunks so the A chunk stays in cache — and
// returns Σ M². Neither the [B, p, d] gradients nor a [B, T, T] Gram matrix is ever formed.
#include <omp.h>

#include <algorithm>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/simd_cpu.h"
#include "ops/grad_norm/grad_norm.h"
#include "ops/grad_norm/grad_norm_math.h"

namespace datadiet {
namespace {

constexpr int kRows = 4;            // rows of M per register tile
constexpr int kCols = 2;            // vectors of M's columns per register tile
constexpr int64_t kItemRows = 64;   // rows of M per work item (a multiple of kRows)
constexpr int64_t kChunkT = 256;    // rows of A / G per pass over a tile

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

struct Strides {
  int64_t sample, row, col;
};

// Σ M² for M = rows [row0, row0 + rows) of the group's Gᵀ A, columns [col0, col0 + dg).
template <typename T, typename S>
S item_sqnorm(const T* a, Strides as, const T* g, Strides gs, int64_t Tn, int64_t dg, int64_t col0, int64_t row0,
              int64_t rows, std::vector<S>& apack, std::vector<S>& gpack, std::vector<S>& tile) {
  using V = typename Vec<S>::type;
  constexpr int L = Vec<S>::lanes, W = kCols * L;
  const int64_t dgp = grad_norm::ceil_div(dg, W) * W;
  const int64_t blocks = grad_norm::ceil_div(rows, kRows);
  std::fill(tile.begin(), tile.begin() + blocks * kRows * dgp, S(0));
  for (int64_t t0 = 0; t0 < Tn; t0 += kChunkT) {
    const int64_t tn = std::min(kChunkT, Tn - t0);
    for (int64_t t = 0; t < tn; ++t) {
      const T* src = a + (t0 + t) * as.row + col0 * as.col;
      S* dst = apack.data() + t * dgp;
      for (int64_t c = 0; c < dg; ++c) dst[c] = static_cast<S>(src[c * as.col]);
      std::fill(dst + dg, dst + dgp, S(0));
    }
    for (int64_t rb = 0; rb < blocks; ++rb)
      for (int64_t t = 0; t < tn; ++t)
        for (int r = 0; r < kRows; ++r) {
          const int64_t rr = rb * kRows + r;
          gpack[(rb * tn + t) * kRows + r] =
              rr < rows ? static_cast<S>(g[(t0 + t) * gs.row + (row0 + rr) * gs.col]) : S(0);
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

template <typename T>
void run(const StableTensor& a, const StableTensor& g, int64_t groups, StableTensor& out) {
  using S = typename grad_norm::Acc<T>::type;
  constexpr int W = kCols * Vec<S>::lanes;
  const int64_t B = a.size(0), Tn = a.size(1), dg = a.size(2) / groups, pg = g.size(2) / groups;
  S* result = out.mutable_data_ptr<S>();
  if (Tn == 0 || dg == 0 || pg == 0) {
    std::fill(result, result + B, S(0));
    return;
  }
  const grad_norm::Tiling tiling = grad_norm::make_tiling(B, groups, pg, dg, kItemRows, dg);
  const int64_t items = tiling.items(), dgp = grad_norm::ceil_div(dg, W) * W;
  const Strides as{a.stride(0), a.stride(1), a.stride(2)}, gs{g.stride(0), g.stride(1), g.stride(2)};
  const T* ap = a.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  std::vector<S> partial(items);
  const int64_t chunk = std::min(kChunkT, Tn);
#pragma omp parallel if (items > 1)
  {
    std::vector<S> apack(chunk * dgp), gpack(chunk * kItemRows), tile(kItemRows * dgp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const grad_norm::Item it = grad_norm::item_of(tiling, item);
      const int64_t row0 = it.tile_p * kItemRows, rows = std::min(kItemRows, pg - row0);
      partial[item] = item_sqnorm<T, S>(ap + it.sample * as.sample, as, gp + it.sample * gs.sample, gs, Tn, dg,
                                        it.group * dg, it.group * pg + row0, rows, apack, gpack, tile);
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
  switch (a.scalar_type()) {
    case ScalarType::Double:
      run<double>(a, g, groups, out);
      break;
    case ScalarType::Float:
      run<float>(a, g, groups, out);
      break;
    case ScalarType::Half:
      run<c10::Half>(a, g, groups, out);
      break;
    default:
      run<c10::BFloat16>(a, g, groups, out);
  }
  return out;
}

}  // namespace datadiet
