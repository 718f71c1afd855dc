// datadiet::weighted_sample on CPU: one vectorisable pass writes every element's
// exponential key (Philox draw, -log, divide by the weight; select_math.h), the shared
// radix engine then takes the k smallest keys per segment, in draw order.
// Built with -ffp-contract=off (CMakeLists.txt) so the keys match CUDA, Triton and the
// reference bit for bit.
#include <limits>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

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

// Four elements per Philox call (select_math.h: random_word).
template <typename T>
void fill_keys(const T* w, int64_t n, uint64_t seed, uint32_t* keys) {
  const int64_t quads = n / 4;
#pragma omp parallel for simd schedule(static)
  for (int64_t j = 0; j < quads; ++j) {
    const sel::Words4 r = sel::philox4(static_cast<uint64_t>(j), 0, seed);
    for (int l = 0; l < 4; ++l) keys[4 * j + l] = sel::exponential_key(static_cast<float>(w[4 * j + l]), r.w[l]);
  }
  for (int64_t i = 4 * quads; i < n; ++i)
    keys[i] = sel::exponential_key(static_cast<float>(w[i]), sel::random_word(i, 0, seed));
}

void check_positive_counts(const uint32_t* keys, const std::vector<int64_t>& offsets,
                           const std::vector<int64_t>& ks) {
  for (size_t g = 0; g < ks.size(); ++g) {
    int64_t positive = 0;
#pragma omp parallel for simd reduction(+ : positive)
    for (int64_t i = offsets[g]; i < offsets[g + 1]; ++i) positive += keys[i] != sel::kInfKey;
    DD_CHECK(ks[g] <= positive, kOp, "k = ", ks[g], " for segment ", g, " but only ", positive,
             " of its weights are positive; zero weights are never drawn");
  }
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
  switch (weights.scalar_type()) {
    case ScalarType::Float:
      sample_typed<float>(weights, offsets, ks, s, o);
      break;
    case ScalarType::Half:
      sample_typed<c10::Half>(weights, offsets, ks, s, o);
      break;
    default:
      sample_typed<c10::BFloat16>(weights, offsets, ks, s, o);
  }
  return out;
}

}  // namespace datadiet
