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
