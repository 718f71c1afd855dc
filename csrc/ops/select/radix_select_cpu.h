// CPU engine behind topk_select and weighted_sample: in each segment, the k smallest
// (key, index) pairs, written as global indices in ascending (key, index) order.
//
// Per segment of n elements, no full sort:
//   1. histogram of the top 11 key bits (per thread, then summed); the bin b where the
//      running count reaches k splits the segment into "surely selected" (digit < b,
//      `below` of them), "candidates" (digit == b) and the rest;
//   2. one pass writes the selected and the candidates, each in index order (every
//      thread writes at the offset its own histogram gives);
//   3. the need = k - below smallest candidates by (key, index) are found with
//      nth_element on packed (key << 32 | local index) words — unique, so the result is
//      deterministic — and sorted;
//   4. a stable LSD radix sort on the key half (3 passes of 11 bits, passes whose digit
//      is constant skipped) orders the k picks; it keeps index order within equal keys
//      because both parts enter it in index order.
// Extra memory: 16 bytes per selected element plus 8 per candidate. Short segments run
// single-threaded on reused per-thread buffers (select_serial), ordering the picks by
// a counting sort on the histogram instead of the LSD passes.
// Long segments use every OpenMP thread inside the passes; short ones are spread over
// the threads one segment each.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace datadiet {
namespace sel {

constexpr int kDigitBits = 11;
constexpr int64_t kBins = int64_t{1} << kDigitBits;
constexpr int kTopShift = 32 - kDigitBits;
constexpr int64_t kParallelSegment = int64_t{1} << 16;

inline uint64_t pack(uint32_t key, int64_t local) { return (uint64_t{key} << 32) | static_cast<uint32_t>(local); }

inline int64_t chunk_start(int64_t n, int t, int threads) { return n * t / threads; }

// One stable counting-sort pass of packed words by the digit at `shift`.
inline void radix_pass(const uint64_t* in, uint64_t* out, int64_t m, int shift, int threads) {
  std::vector<int64_t> count(static_cast<size_t>(threads) * kBins, 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    int64_t* c = count.data() + t * kBins;
    const int64_t lo = chunk_start(m, t, threads), hi = chunk_start(m, t + 1, threads);
    for (int64_t i = lo; i < hi; ++i) ++c[(in[i] >> shift) & (kBins - 1)];
#pragma omp barrier
#pragma omp single
    {
      int64_t running = 0;  // digit-major, thread-minor: stable
      for (int64_t d = 0; d < kBins; ++d)
        for (int u = 0; u < threads; ++u) {
          const int64_t x = count[u * kBins + d];
          count[u * kBins + d] = running;
          running += x;
        }
    }
    for (int64_t i = lo; i < hi; ++i) out[c[(in[i] >> shift) & (kBins - 1)]++] = in[i];
  }
}

// Stable sort of packed words by their key half; returns the buffer holding the result.
inline uint64_t* sort_by_key(uint64_t* a, uint64_t* tmp, int64_t m, int threads) {
  for (int shift = 32; shift < 64; shift += kDigitBits) {
    const uint64_t digit0 = m ? (a[0] >> shift) & (kBins - 1) : 0;
    bool constant = true;
    for (int64_t i = 1; i < m && constant; ++i) constant = ((a[i] >> shift) & (kBins - 1)) == digit0;
    if (constant) continue;
    radix_pass(a, tmp, m, shift, threads);
    std::swap(a, tmp);
  }
  return a;
}

// Reused per-thread buffers of the single-threaded path.
struct Scratch {
  std::vector<uint32_t> hist = std::vector<uint32_t>(kBins);
  std::vector<uint32_t> keys;
  std::vector<uint64_t> picked, cand;
};

inline Scratch& thread_scratch() {
  static thread_local Scratch s;
  return s;
}

// Single-threaded select of one segment on reused buffers. The histogram doubles as a
// counting sort: the picks are written straight into per-digit buckets (index order
// within each), so ordering them only sorts each small bucket.
template <typename KeyAt>
void select_serial(const KeyAt& key_at, int64_t begin, int64_t n, int64_t k, int64_t* out) {
  Scratch& s = thread_scratch();
  s.keys.resize(n);
  uint32_t* keys = s.keys.data();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) keys[i] = key_at(begin + i);
  uint32_t* h = s.hist.data();
  std::fill(h, h + kBins, 0u);
  for (int64_t i = 0; i < n; ++i) ++h[keys[i] >> kTopShift];
  int64_t below = 0;
  uint32_t bin = 0;
  for (; below + h[bin] < k; ++bin) {
    const uint32_t count = h[bin];
    h[bin] = static_cast<uint32_t>(below);  // bucket start
    below += count;
  }
  s.picked.resize(k);
  s.cand.resize(h[bin]);
  uint64_t* picked = s.picked.data();
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = keys[i], d = key >> kTopShift;
    if (d < bin) picked[h[d]++] = pack(key, i);
    else if (d == bin) s.cand[c++] = pack(key, i);
  }
  const int64_t need = k - below;
  if (need < c) std::nth_element(s.cand.begin(), s.cand.begin() + need, s.cand.end());
  std::sort(s.cand.begin(), s.cand.begin() + need);
  std::copy(s.cand.begin(), s.cand.begin() + need, picked + below);
  uint32_t start = 0;  // h[d] is now the end of bucket d; packed words are unique
  for (uint32_t d = 0; d < bin; ++d) {
    if (h[d] - start > 1) std::sort(picked + start, picked + h[d]);
    start = std::max(start, h[d]);
  }
  for (int64_t j = 0; j < k; ++j) out[j] = begin + static_cast<int64_t>(picked[j] & 0xffffffffu);
  if (n > kParallelSegment) s = Scratch{};  // a long segment on one thread: do not keep its buffers
}

// key_at(i) -> uint32 key of global element i. Writes k global indices to out, using
// `threads` OpenMP threads inside the passes.
template <typename KeyAt>
void select_segment(const KeyAt& key_at, int64_t begin, int64_t n, int64_t k, int64_t* out, int threads) {
  if (k == 0) return;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n / 4096)));
  if (threads == 1) return select_serial(key_at, begin, n, k, out);
  std::vector<int64_t> hist(static_cast<size_t>(threads) * kBins, 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    int64_t* h = hist.data() + t * kBins;
    const int64_t lo = begin + chunk_start(n, t, threads), hi = begin + chunk_start(n, t + 1, threads);
    for (int64_t i = lo; i < hi; ++i) ++h[key_at(i) >> kTopShift];
  }
  int64_t below = 0, b = 0;
  for (;; ++b) {
    int64_t in_bin = 0;
    for (int t = 0; t < threads; ++t) in_bin += hist[t * kBins + b];
    if (below + in_bin >= k) break;
    below += in_bin;
  }
  // Per-thread write offsets of the selected (digit < b) and candidates (digit == b).
  std::vector<int64_t> sel_at(threads + 1, 0), cand_at(threads + 1, 0);
  for (int t = 0; t < threads; ++t) {
    int64_t s = 0;
    for (int64_t d = 0; d < b; ++d) s += hist[t * kBins + d];
    sel_at[t + 1] = sel_at[t] + s;
    cand_at[t + 1] = cand_at[t] + hist[t * kBins + b];
  }
  std::vector<uint64_t> picked(k), cand(cand_at[threads]), tmp(k);
  const uint32_t bin = static_cast<uint32_t>(b);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    int64_t s = sel_at[t], c = cand_at[t];
    const int64_t lo = begin + chunk_start(n, t, threads), hi = begin + chunk_start(n, t + 1, threads);
    for (int64_t i = lo; i < hi; ++i) {
      const uint32_t key = key_at(i), d = key >> kTopShift;
      if (d < bin) picked[s++] = pack(key, i - begin);
      else if (d == bin) cand[c++] = pack(key, i - begin);
    }
  }
  const int64_t need = k - below;
  if (need < static_cast<int64_t>(cand.size())) {
    std::nth_element(cand.begin(), cand.begin() + need, cand.end());
    std::sort(cand.begin(), cand.begin() + need);
  }
  std::copy(cand.begin(), cand.begin() + need, picked.begin() + below);
  const uint64_t* sorted = sort_by_key(picked.data(), tmp.data(), k, threads);
  for (int64_t j = 0; j < k; ++j) out[j] = begin + static_cast<int64_t>(sorted[j] & 0xffffffffu);
}

// All segments: long ones one after another with every thread, short ones in parallel.
template <typename KeyAt>
void select_segments(const KeyAt& key_at, const std::vector<int64_t>& offsets, const std::vector<int64_t>& ks,
                     int64_t* out) {
  const int64_t groups = static_cast<int64_t>(ks.size());
  std::vector<int64_t> out_at(groups + 1, 0);
  for (int64_t g = 0; g < groups; ++g) out_at[g + 1] = out_at[g] + ks[g];
  const int threads = omp_get_max_threads();
  std::vector<int64_t> small;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t n = offsets[g + 1] - offsets[g];
    if (n >= kParallelSegment) select_segment(key_at, offsets[g], n, ks[g], out + out_at[g], threads);
    else if (ks[g] > 0) small.push_back(g);
  }
  int64_t small_work = 0;
  for (const int64_t g : small) small_work += offsets[g + 1] - offsets[g];
#pragma omp parallel for schedule(dynamic, 1) if (small_work >= kParallelSegment)
  for (size_t j = 0; j < small.size(); ++j) {
    const int64_t g = small[j];
    select_segment(key_at, offsets[g], offsets[g + 1] - offsets[g], ks[g], out + out_at[g], 1);
  }
}

}  // namespace sel
}  // namespace datadiet
