// Work decomposition of datadiet::per_sample_grad_sqnorm, shared by the CPU and CUDA kernels.
//
// The per-sample gradient M = Gᵀ A of one group is [pg, dg]; it is cut into tiles of
// kTileP rows and kTileD columns (the CPU kernel takes whole rows of M per item: tile_d =
// dg). A work item is (sample i, group k, row tile, column tile) in that nesting order; each
// writes the squared sum of its tile to partial[item], and the items of a sample are summed
// in item order afterwards, so the result does not depend on thread scheduling.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace datadiet {
namespace grad_norm {

struct Tiling {
  int64_t B, groups, tiles_p, tiles_d;  // items = B · groups · tiles_p · tiles_d

  DD_HD int64_t per_sample() const { return groups * tiles_p * tiles_d; }
  DD_HD int64_t items() const { return B * per_sample(); }
};

// A [B, T, n] operand through its strides: sample, row (t) and column.
struct Strides {
  int64_t sample, row, col;
};

struct Item {
  int64_t sample, group, tile_p, tile_d;
};

DD_HD int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

DD_HD Tiling make_tiling(int64_t B, int64_t groups, int64_t pg, int64_t dg, int64_t tile_p, int64_t tile_d) {
  return Tiling{B, groups, ceil_div(pg, tile_p), ceil_div(dg, tile_d)};
}

DD_HD Item item_of(const Tiling& t, int64_t item) {
  Item it;
  it.tile_d = item % t.tiles_d;
  item /= t.tiles_d;
  it.tile_p = item % t.tiles_p;
  item /= t.tiles_p;
  it.group = item % t.groups;
  it.sample = item / t.groups;
  return it;
}

// A convolution's unfolded input, never materialised: A[t, c] of one sample is the input pixel under
// kernel tap (ki, kj) of input channel ci for output position t = oh · Wo + ow, c = ci · kh · kw + ki
// · kw + kj (F.unfold's order, the weight's [out, in/groups, kh, kw] layout), 0 in the zero padding.
struct ConvGeometry {
  int64_t H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t sc, sy, sx;  // the input's channel, row and column strides

  // The element offset of A[t, c] in the sample's input, or -1 in the padding.
  DD_HD int64_t offset(int64_t t, int64_t c) const {
    const int64_t kk = kh * kw, ci = c / kk, tap = c % kk;
    const int64_t y = (t / Wo) * sh - ph + (tap / kw) * dh, x = (t % Wo) * sw - pw + (tap % kw) * dw;
    return (y >= 0 && y < H && x >= 0 && x < W) ? ci * sc + y * sy + x * sx : -1;
  }
};

// Accumulation type: float64 for float64 inputs, float32 for the others.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

}  // namespace grad_norm
}  // namespace datadiet
