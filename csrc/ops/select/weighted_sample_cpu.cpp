// datadiet::weighted_sample on CPU: one vectorisable pass writes every element's
// exponential key (Philox draw, -log, divide by the weight; select_math.h), the shared
// radix engine then takes the k smallest keys per segment, in draw order.
// Built with -ffp-contract=off (CMakeLists.txt) so the keys match CUDA, Triton and the
// reference bit for bit.
#include <limits>

#include "common/dispatch.h"
#include "ops/select/radix_select_cpu.h"
#include "ops/select/select.h"
#include "ops/select/select_math.h"

namespace datadiet {
namespace {

constexpr const char* kOp = "weighted_sample";

template <typename T>
void check_weights(const T* w, int64_t n) {
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for reduction(min : first_bad)
  for (int64_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(w[i]);
    if (!(x >= 0.0f && x <= std::numeric_limits<float>::max())) first_bad = std::min(first_bad, i);
  }
  DD_CHECK(first_bad == std::numeric_limits<int64_t>::max(), kOp, "weights must be finite and >= 0, got weights[",
           first_bad, "] = ", static_cast<float>(w[first_bad]));
}

// Four elements per Philox call (select_math.h: random_word). Blocks of 16 calls so
// both loops vectorise: Philox lanes side by side, then the 64 keys.
constexpr int kCalls = 16;

template <typename T>
void fill_keys(const T* w, int64_t n, uint64_t seed, uint32_t* keys) {
  const int64_t blocks = n / (4 * kCalls);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    uint32_t words[4 * kCalls];
#pragma omp simd
    for (int q = 0; q < kCalls; ++q) {
      const sel::Words4 r = sel::philox4(static_cast<uint64_t>(b * kCalls + q), 0, seed);
      words[4 * q] = r.w[0];
      words[4 * q + 1] = r.w[1];
      words[4 * q + 2] = r.w[2];
      words[4 * q + 3] = r.w[3];
    }
    const int64_t base = b * 4 * kCalls;
#pragma omp simd
    for (int e = 0; e < 4 * kCalls; ++e) keys[base + e] = sel::exponential_key(static_cast<float>(w[base + e]), words[e]);
  }
  for (int64_t i = blocks * 4 * kCalls; i < n; ++i)
    keys[i] = sel::exponential_key(static_cast<float>(w[i]), sel::random_word(i, 0, seed));
}

int64_t count_positive(const uint32_t* keys, int64_t lo, int64_t hi) {
  int64_t positive = 0;
#pragma omp simd reduction(+ : positive)
  for (int64_t i = lo; i < hi; ++i) positive += keys[i] != sel::kInfKey;
  return positive;
}

// One segment: split its range over the threads; many: one segment per thread.
void check_positive_counts(const uint32_t* keys, const std::vector<int64_t>& offsets,
                           const std::vector<int64_t>& ks) {
  const int64_t groups = static_cast<int64_t>(ks.size());
  std::vector<int64_t> positive(groups, 0);
  if (groups == 1) {
    int64_t total = 0;
#pragma omp parallel for reduction(+ : total)
    for (int64_t c = offsets[0]; c < offsets[1]; c += 65536)
      total += count_positive(keys, c, std::min(c + 65536, offsets[1]));
    positive[0] = total;
  } else {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t g = 0; g < groups; ++g) positive[g] = count_positive(keys, offsets[g], offsets[g + 1]);
  }
  for (int64_t g = 0; g < groups; ++g)
    DD_CHECK(ks[g] <= positive[g], kOp, "k = ", ks[g], " for segment ", g, " but only ", positive[g],
             " of its weights are positive; zero weights are never drawn");
}

template <typename T>
void sample_typed(const StableTensor& weights, const std::vector<int64_t>& offsets, const std::vector<int64_t>& ks,
                  uint64_t seed, int64_t* out) {
  const T* w = weights.const_data_ptr<T>();
  const int64_t n = weights.numel();
  check_weights(w, n);
  std::vector<uint32_t> keys(n);
  fill_keys(w, n, seed, keys.data());
  check_positive_counts(keys.data(), offsets, ks);
  const uint32_t* k = keys.data();
  sel::select_segments([k](int64_t i) { return k[i]; }, offsets, ks, out);
}

}  // namespace

StableTensor weighted_sample_cpu(const StableTensor& weights, std::vector<int64_t> offsets,
                                 std::vector<int64_t> ks, int64_t seed) {
  const int64_t total = check_segments(kOp, "weights", weights, offsets, ks);
  StableTensor out = torch::stable::new_empty(weights, {total}, ScalarType::Long);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  dispatch_float(weights.scalar_type(), [&](auto tag) { sample_typed<decltype(tag)>(weights, offsets, ks, s, o); });
  return out;
}

}  // namespace datadiet
