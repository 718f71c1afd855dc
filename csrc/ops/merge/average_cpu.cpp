// datadiet::average_ and datadiet::lerp_ on CPU: one parallel pass over fixed-size chunks
// of every tensor in the list. Each block of 16 (float32) or 64 (fp16/bf16) elements is
// summed over all sources, in model order, before dst is written — so dst may be one of
// the sources — with the M source streams read side by side. (Summing a whole chunk of one
// source into a buffer before the next source measured half as fast: 25 vs 14 ms for 10
// resnet18-sized models on 2 cores, the hardware prefetchers restarting on every switch.)
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/dispatch.h"
#include "common/simd_cpu.h"
#include "ops/merge/merge.h"

namespace datadiet {
namespace {

constexpr int64_t kChunk = 16384;
constexpr int64_t kBlock = 64;  // fp16/bf16: elements converted and summed per source at a time

// dst[begin, end) = Σ_m w[m] src[m][begin, end) for float32: 16-lane running sums.
void weighted_sum(float* dst, const std::vector<const float*>& src, const std::vector<float>& w, int64_t begin,
                  int64_t end) {
  using simd::vf16;
  const size_t models = src.size();
  int64_t i = begin;
  for (; i + simd::kLanes <= end; i += simd::kLanes) {
    vf16 acc = simd::splat(w[0]) * simd::load16(src[0] + i);
    for (size_t m = 1; m < models; ++m) acc += simd::splat(w[m]) * simd::load16(src[m] + i);
    std::memcpy(dst + i, &acc, sizeof acc);
  }
  for (; i < end; ++i) {
    float acc = w[0] * src[0][i];
    for (size_t m = 1; m < models; ++m) acc += w[m] * src[m][i];
    dst[i] = acc;
  }
}

// The same for fp16/bf16: blocks of kBlock widened to float, rounded once on store.
template <typename T>
void weighted_sum(T* dst, const std::vector<const T*>& src, const std::vector<float>& w, int64_t begin, int64_t end) {
  float acc[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t len = std::min(kBlock, end - b);
    for (size_t m = 0; m < src.size(); ++m) {
      const T* s = src[m] + b;
      for (int64_t i = 0; i < len; ++i) acc[i] = (m == 0 ? 0.0f : acc[i]) + w[m] * static_cast<float>(s[i]);
    }
    for (int64_t i = 0; i < len; ++i) dst[b + i] = static_cast<T>(acc[i]);
  }
}

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
    dispatch_float(dst[t].scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      std::vector<const T_*> src(models);
      for (int64_t m = 0; m < models; ++m) src[m] = sources[m * T + t].const_data_ptr<T_>();
      weighted_sum(dst[t].mutable_data_ptr<T_>(), src, w, begin, end);
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
