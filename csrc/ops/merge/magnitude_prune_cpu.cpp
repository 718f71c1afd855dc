// datadiet::magnitude_prune_ on CPU: for each group (the whole list, or each tensor), the
// keep-th largest magnitude key is found by kPasses counting passes over the group's chunks
// (one 16-bit digit each, per-thread histograms summed in chunk order), then one pass
// zeroes the rest and writes the masks. When more keys equal the threshold than are kept,
// a counting pass first gives each chunk its rank among them, so ties are kept lower index
// first. Extra memory: the histograms and the chunk table, never a copy of the weights.
//
// float32 chunks run 16 lanes at a time: the second histogram pass tests 16 prefixes at once
// (few match), and the apply pass zeroes and writes masks with vector selects, sending only
// lanes equal to the threshold through the sequential tie rule. On resnet50's weights the
// element-at-a-time loops took ~22 ms (second pass) and ~34 ms (apply) on 2 cores, the
// vector ones ~9 ms and ~6 ms.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/dispatch.h"
#include "common/simd_cpu.h"
#include "ops/merge/magnitude.h"
#include "ops/merge/merge.h"

namespace datadiet {
namespace {

using merge::magnitude_key;
using D = merge::Digits<16>;
constexpr int kBins = D::kBins;

constexpr int64_t kChunk = int64_t{1} << 16;

struct Chunk {
  int64_t tensor, begin, end;
};

using simd::any;
using simd::kLanes;
using simd::load_bits16;
using simd::vu16;
typedef uint8_t vb16 __attribute__((vector_size(16)));  // one mask byte per lane

// Calls f(key, i) for the elements of chunk c (i the flat index in its tensor).
template <typename F>
void each_key(const StableTensor& t, const Chunk& c, F&& f) {
  dispatch_float(t.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = t.const_data_ptr<T>();
    for (int64_t i = c.begin; i < c.end; ++i) f(magnitude_key(static_cast<float>(x[i])), i);
  });
}

// Counts the keys of x[begin, end) whose higher digits equal `prefix` into h by their digit of
// `pass`; true when a NaN was seen (pass 0 checks).
template <typename T>
bool count_digits(const T* x, int64_t begin, int64_t end, uint32_t prefix, int pass, int64_t* h) {
  bool nan = false;
  int64_t i = begin;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + kLanes <= end; i += kLanes) {
      const vu16 k = load_bits16(x + i) & 0x7fffffffu;
      if (pass == 0) {
        nan |= any(k > merge::kInfKey);
        for (int l = 0; l < kLanes; ++l) ++h[D::digit(k[l], 0)];
      } else {
        const vu16 hit = (k >> (32 - 16 * pass)) == prefix;
        if (any(hit))
          for (int l = 0; l < kLanes; ++l)
            if (hit[l]) ++h[D::digit(k[l], pass)];
      }
    }
  }
  for (; i < end; ++i) {
    const uint32_t key = magnitude_key(static_cast<float>(x[i]));
    nan |= pass == 0 && key > merge::kInfKey;
    if (D::matches(key, prefix, pass)) ++h[D::digit(key, pass)];
  }
  return nan;
}

template <typename T>
int64_t count_equal(const T* x, int64_t begin, int64_t end, uint32_t threshold) {
  int64_t n = 0, i = begin;
  if constexpr (std::is_same_v<T, float>) {
    vu16 acc = {};
    for (; i + kLanes <= end; i += kLanes) acc += ((load_bits16(x + i) & 0x7fffffffu) == threshold) & 1u;
    for (int l = 0; l < kLanes; ++l) n += acc[l];
  }
  for (; i < end; ++i) n += magnitude_key(static_cast<float>(x[i])) == threshold;
  return n;
}

// Keeps keys above `threshold` and, in index order, ties while `seen` < `need`; zeroes the
// rest and writes the mask (when given).
template <typename T>
void keep_largest(T* x, bool* mask, int64_t begin, int64_t end, uint32_t threshold, int64_t need, int64_t& seen) {
  int64_t i = begin;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + kLanes <= end; i += kLanes) {
      vu16 b = load_bits16(x + i);
      const vu16 k = b & 0x7fffffffu;
      vu16 keep = k > threshold;
      const vu16 tie = k == threshold;
      if (any(tie))
        for (int l = 0; l < kLanes; ++l)
          if (tie[l] && seen++ < need) keep[l] = ~0u;
      b &= keep;
      std::memcpy(x + i, &b, sizeof b);
      if (mask) {
        const vb16 m = __builtin_convertvector(keep & 1u, vb16);
        std::memcpy(mask + i, &m, sizeof m);
      }
    }
  }
  for (; i < end; ++i) {
    const uint32_t key = magnitude_key(static_cast<float>(x[i]));
    const bool kept = key > threshold || (key == threshold && seen++ < need);
    if (!kept) x[i] = T(0.0f);
    if (mask) mask[i] = kept;
  }
}

class Group {
 public:
  Group(std::vector<StableTensor>& tensors, std::vector<int64_t> members) : tensors_(tensors), members_(members) {
    for (const int64_t t : members_)
      for (int64_t b = 0; b < tensors_[t].numel(); b += kChunk)
        chunks_.push_back({t, b, std::min(tensors_[t].numel(), b + kChunk)});
  }

  void prune(int64_t keep, std::vector<StableTensor>& masks) {
    int64_t want = keep;
    uint32_t prefix = 0;
    int64_t ties = 0;
    for (int pass = 0; pass < D::kPasses; ++pass) {
      const std::vector<int64_t> hist = histogram(prefix, pass);
      if (keep == 0) break;  // histogram(pass 0) still checked for NaN
      const uint32_t d = merge::choose_digit<kBins>(hist.data(), want);
      ties = hist[d];
      prefix = (prefix << 16) | d;
    }
    apply(keep == 0 ? merge::kInfKey + 1 : prefix, keep == 0 ? 0 : want, keep == 0 ? 0 : ties, masks);
  }

 private:
  const StableTensor& of(const Chunk& c) const { return tensors_[c.tensor]; }
  int64_t chunks() const { return static_cast<int64_t>(chunks_.size()); }

  std::vector<int64_t> histogram(uint32_t prefix, int pass) const {
    const int threads = omp_get_max_threads();
    std::vector<int64_t> hist(static_cast<size_t>(kBins) * threads, 0);
    std::vector<int64_t> nan_at(threads, -1);  // first chunk with a NaN per thread
#pragma omp parallel
    {
      int64_t* h = hist.data() + static_cast<size_t>(kBins) * omp_get_thread_num();
      int64_t& bad = nan_at[omp_get_thread_num()];
#pragma omp for schedule(static)
      for (int64_t c = 0; c < chunks(); ++c)
        dispatch_float(of(chunks_[c]).scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          const T* x = of(chunks_[c]).template const_data_ptr<T>();
          if (count_digits(x, chunks_[c].begin, chunks_[c].end, prefix, pass, h) && bad < 0) bad = c;
        });
    }
    for (const int64_t c : nan_at) {
      if (c < 0) continue;
      int64_t first = -1;
      each_key(of(chunks_[c]), chunks_[c], [&](uint32_t key, int64_t i) {
        if (key > merge::kInfKey && first < 0) first = i;
      });
      DD_CHECK(false, "magnitude_prune_", "tensors[", chunks_[c].tensor, "] has a NaN at flat index ", first,
               "; a NaN has no magnitude order");
    }
    for (int t = 1; t < threads; ++t)
      for (int b = 0; b < kBins; ++b) hist[b] += hist[static_cast<size_t>(kBins) * t + b];
    hist.resize(kBins);
    return hist;
  }

  // Keeps keys above `threshold` and the first `need` of the `ties` keys equal to it.
  void apply(uint32_t threshold, int64_t need, int64_t ties, std::vector<StableTensor>& masks) {
    std::vector<int64_t> rank(chunks() + 1, 0);  // ties before each chunk
    if (need < ties) {
#pragma omp parallel for schedule(static)
      for (int64_t c = 0; c < chunks(); ++c)
        dispatch_float(of(chunks_[c]).scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          rank[c + 1] = count_equal(of(chunks_[c]).template const_data_ptr<T>(), chunks_[c].begin, chunks_[c].end,
                                    threshold);
        });
      for (int64_t c = 0; c < chunks(); ++c) rank[c + 1] += rank[c];
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks(); ++c) {
      const Chunk& ch = chunks_[c];
      StableTensor& t = tensors_[ch.tensor];
      bool* mask = masks.empty() ? nullptr : masks[ch.tensor].mutable_data_ptr<bool>();
      int64_t seen = rank[c];
      dispatch_float(t.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        keep_largest(t.template mutable_data_ptr<T>(), mask, ch.begin, ch.end, threshold, need, seen);
      });
    }
  }

  std::vector<StableTensor>& tensors_;
  std::vector<int64_t> members_;
  std::vector<Chunk> chunks_;
};

}  // namespace

void magnitude_prune_cpu(std::vector<StableTensor> tensors, std::vector<StableTensor> masks,
                         std::vector<int64_t> keep) {
  check_prune_args(tensors, masks, keep);
  const int64_t T = static_cast<int64_t>(tensors.size());
  if (keep.size() == 1 && T != 1) {
    std::vector<int64_t> all(T);
    for (int64_t t = 0; t < T; ++t) all[t] = t;
    Group(tensors, all).prune(keep[0], masks);
  } else {
    for (int64_t t = 0; t < T; ++t) Group(tensors, {t}).prune(keep[t], masks);
  }
}

}  // namespace datadiet
