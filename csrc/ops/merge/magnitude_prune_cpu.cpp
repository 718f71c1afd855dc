// datadiet::magnitude_prune_ on CPU: for each group (the whole list, or each tensor), the
// keep-th largest magnitude key is found by kPasses counting passes over the group's chunks
// (one 16-bit digit each, per-thread histograms summed in chunk order), then one pass
// zeroes the rest and writes the masks. When more keys equal the threshold than are kept,
// a counting pass first gives each chunk its rank among them, so ties are kept lower index
// first. Extra memory: the histograms and the chunk table, never a copy of the weights.
#include <omp.h>

#include <algorithm>
#include <limits>

#include "common/dispatch.h"
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

// Calls f(key, i) for the elements of chunk c (i the flat index in its tensor).
template <typename F>
void each_key(const StableTensor& t, const Chunk& c, F&& f) {
  dispatch_float(t.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = t.const_data_ptr<T>();
    for (int64_t i = c.begin; i < c.end; ++i) f(magnitude_key(static_cast<float>(x[i])), i);
  });
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
        each_key(of(chunks_[c]), chunks_[c], [&](uint32_t key, int64_t) {
          if (pass == 0 && key > merge::kInfKey && bad < 0) bad = c;
          if (D::matches(key, prefix, pass)) ++h[D::digit(key, pass)];
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
      for (int64_t c = 0; c < chunks(); ++c) {
        int64_t n = 0;
        each_key(of(chunks_[c]), chunks_[c], [&](uint32_t key, int64_t) { n += key == threshold; });
        rank[c + 1] = n;
      }
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
        T* x = t.mutable_data_ptr<T>();
        for (int64_t i = ch.begin; i < ch.end; ++i) {
          const uint32_t key = magnitude_key(static_cast<float>(x[i]));
          const bool kept = key > threshold || (key == threshold && seen++ < need);
          if (!kept) x[i] = T(0.0f);
          if (mask) mask[i] = kept;
        }
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
