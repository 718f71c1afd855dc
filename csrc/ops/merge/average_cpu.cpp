// datadiet::average_ and datadiet::lerp_ on CPU: one parallel pass over fixed-size chunks
// of every tensor in the list. A chunk's result is accumulated in a float32 buffer (all
// sources read, in model order) before dst is written, so dst may be one of the sources.
#include <omp.h>

#include <algorithm>

#include "common/dispatch.h"
#include "ops/merge/merge.h"

namespace datadiet {
namespace {

constexpr int64_t kChunk = 4096;

// Calls f(t, begin, end) for chunks of every tensor of `dst`, in parallel.
template <typename F>
void each_chunk(const std::vector<StableTensor>& dst, F&& f) {
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (tensor, begin)
  for (size_t t = 0; t < dst.size(); ++t)
    for (int64_t b = 0; b < dst[t].numel(); b += kChunk) chunks.emplace_back(static_cast<int64_t>(t), b);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < static_cast<int64_t>(chunks.size()); ++c) {
    const auto [t, b] = chunks[c];
    f(t, b, std::min(dst[t].numel(), b + kChunk));
  }
}

}  // namespace

void average_cpu(std::vector<StableTensor> dst, std::vector<StableTensor> sources, std::vector<double> weights) {
  check_average_args(dst, sources, weights);
  const int64_t T = static_cast<int64_t>(dst.size()), models = static_cast<int64_t>(weights.size());
  std::vector<float> w(weights.begin(), weights.end());
  each_chunk(dst, [&](int64_t t, int64_t begin, int64_t end) {
    float acc[kChunk];
    const int64_t len = end - begin;
    dispatch_float(dst[t].scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      for (int64_t m = 0; m < models; ++m) {
        const T_* src = sources[m * T + t].const_data_ptr<T_>() + begin;
        const float wm = w[m];
        if (m == 0) {
#pragma omp simd
          for (int64_t i = 0; i < len; ++i) acc[i] = wm * static_cast<float>(src[i]);
        } else {
#pragma omp simd
          for (int64_t i = 0; i < len; ++i) acc[i] += wm * static_cast<float>(src[i]);
        }
      }
      T_* out = dst[t].mutable_data_ptr<T_>() + begin;
      if (models == 0) std::fill(acc, acc + len, 0.0f);
      for (int64_t i = 0; i < len; ++i) out[i] = static_cast<T_>(acc[i]);
    });
  });
}

void lerp_cpu(std::vector<StableTensor> dst, std::vector<StableTensor> other, double alpha) {
  check_same_layout("lerp_", dst, other, "other");
  DD_CHECK(other.size() == dst.size(), "lerp_", "other must hold one model of ", dst.size(), " tensors, got ",
           other.size());
  const float a = static_cast<float>(alpha);
  each_chunk(dst, [&](int64_t t, int64_t begin, int64_t end) {
    dispatch_float(dst[t].scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      T_* x = dst[t].mutable_data_ptr<T_>();
      const T_* y = other[t].const_data_ptr<T_>();
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) {
        const float xi = static_cast<float>(x[i]);
        x[i] = static_cast<T_>(xi + a * (static_cast<float>(y[i]) - xi));
      }
    });
  });
}

}  // namespace datadiet
