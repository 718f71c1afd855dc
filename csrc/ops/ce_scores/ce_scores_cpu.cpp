// datadiet::ce_scores on CPU: rows in parallel (OpenMP), each row in blocks of
// kBlock logits. A block's max is found first (SIMD), then one SIMD sweep
// accumulates its off-label exp sums relative to that max, and the block state is
// merged into the row state with the shared merge() — online softmax at block
// granularity, so every logit is read from memory once and exp'ed once. The block
// sits in L1 between the two sweeps. Blocks holding no finite logit go through the
// shared scalar push().
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/dispatch.h"
#include "common/simd_cpu.h"
#include "ops/ce_scores/ce_scores.h"
#include "ops/ce_scores/ce_scores_math.h"

namespace datadiet {
namespace {

using ce::RowState;
constexpr int kBlock = 512;  // logits per block: 2 KiB of fp32, stays in L1

using simd::hsum;
using simd::kLanes;
using simd::load16;
using simd::splat;
using simd::vf16;
using simd::vi16;

// exp(x) for x <= 0 (x is always z - max here): Cephes' expf range reduction and
// degree-6 polynomial, ~1 ulp, branch-free. Below -87.3 (where expf leaves the normal
// range) and at -inf it returns 0. Templated so the scalar tail computes bit-identical
// values to the vector body.
template <typename F, typename I>
inline F exp_nonpositive(F x) {
  const F xc = x < -87.3f ? F{} + -87.3f : x;
  const F k = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  F r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  I bits;
  if constexpr (std::is_same_v<F, float>) {
    bits = (static_cast<I>(k) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(k, I) + 127) << 23;
  }
  F scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.3f ? F{} : p * scale;
}

inline float exp_nonpositive(float x) { return exp_nonpositive<float, int32_t>(x); }

inline float hmax(vf16 v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// The block's max (NaN lanes never win a > comparison).
inline float block_max(const float* z, int n) {
  const int nv = n - n % kLanes;
  vf16 mv = splat(-ce::kInf);
  for (int j = 0; j < nv; j += kLanes) {
    const vf16 zj = load16(z + j);
    mv = zj > mv ? zj : mv;
  }
  float m = hmax(mv);
  for (int j = nv; j < n; ++j) m = z[j] > m ? z[j] : m;
  return m;
}

// First index of the block max bm, and the runner-up (bm itself if bm occurs twice),
// in one sweep: count of bm, min index of bm, max of the values below bm.
inline void block_top2(const float* z, int n, float bm, int& first, float& second) {
  const int nv = n - n % kLanes;
  const vf16 vbm = splat(bm);
  vi16 lane, first_v, count_v = vi16{};
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  first_v = vi16{} + n;
  vf16 below = splat(-ce::kInf);
  const vi16 none = vi16{} + n;
  const vf16 neg_inf = splat(-ce::kInf);
  for (int j = 0; j < nv; j += kLanes) {
    // Selects feed plain min/max so each accumulator's dependency chain is one op long.
    const vf16 zj = load16(z + j);
    const vi16 is_max = zj == vbm;  // -1 where equal
    const vi16 idx = is_max != 0 ? lane + j : none;
    first_v = idx < first_v ? idx : first_v;
    count_v -= is_max;
    const vf16 cand = zj < vbm ? zj : neg_inf;
    below = cand > below ? cand : below;
  }
  first = n;
  int count = 0;
  float sec = hmax(below);
  for (int i = 0; i < kLanes; ++i) {
    first = first_v[i] < first ? first_v[i] : first;
    count += count_v[i];
  }
  for (int j = nv; j < n; ++j) {
    if (z[j] == bm) {
      first = j < first ? j : first;
      ++count;
    } else if (z[j] > sec) {
      sec = z[j];
    }
  }
  second = count >= 2 ? bm : sec;
}

// Merge the logits z[0..n) (columns col0..col0+n) into st.
void fold_block(RowState& st, const float* z, int n, int64_t col0, int64_t y_excl, float pivot) {
  const float bm = block_max(z, n);
  if (!(bm > -ce::kInf)) {  // only -inf / NaN here: no exp sums to make
    for (int j = 0; j < n; ++j) ce::push(st, z[j], col0 + j, y_excl, pivot);
    return;
  }
  RowState b = ce::empty_state();
  b.m = bm;
  if (bm > st.m) {  // the block's argmax and runner-up matter only if it holds the row max
    int first;
    block_top2(z, n, bm, first, b.second);
    b.argmax = col0 + first;
  }
  // Off-label sums relative to the block max. Only the vector holding the target
  // pays for masking it out. t uses the clamped exponent (e = 0 there), so a -inf
  // logit adds 0 * -87.3, not 0 * -inf.
  const int y_in_block = (y_excl >= col0 && y_excl < col0 + n) ? static_cast<int>(y_excl - col0) : -1;
  const vf16 vm = splat(bm), vpivot = splat(pivot), zero = splat(0.f), lo = splat(-87.3f);
  vf16 s1 = zero, s2 = zero, t = zero, sz = zero;
  auto accumulate = [&](int j, bool has_target) {
    // Overlap the next block's DRAM reads (next in the row, or the next row's start)
    // with this block's exp work; prefetches never fault.
    __builtin_prefetch(z + j + kBlock);
    const vf16 zj = load16(z + j);
    sz += zj - vpivot;
    const vf16 d = zj - vm;
    vf16 e = exp_nonpositive<vf16, vi16>(d);
    if (has_target) {
      vi16 lane;
      for (int i = 0; i < kLanes; ++i) lane[i] = j + i;
      e = lane == y_in_block ? zero : e;
    }
    s1 += e;
    s2 += e * e;
    t += e * (d < lo ? lo : d);
  };
  const int nv = n - n % kLanes;
  const int y_vec = y_in_block >= 0 && y_in_block < nv ? y_in_block - y_in_block % kLanes : nv;
  for (int j = 0; j < y_vec; j += kLanes) accumulate(j, false);
  if (y_vec < nv) accumulate(y_vec, true);
  for (int j = y_vec + kLanes; j < nv; j += kLanes) accumulate(j, false);
  float s1t = hsum(s1), s2t = hsum(s2), tt = hsum(t), szt = hsum(sz);
  for (int j = nv; j < n; ++j) {
    szt += z[j] - pivot;
    const float d = z[j] - bm;
    const float e = j == y_in_block ? 0.f : exp_nonpositive(d);
    s1t += e;
    s2t += e * e;
    tt += e * (d < -87.3f ? -87.3f : d);
  }
  b.s1 = s1t;
  b.s2 = s2t;
  b.t = tt;
  b.sum_z = szt;
  st = ce::merge(st, b);
}

template <typename T, typename E>
void ce_scores_rows(const T* logits, int64_t rs, int64_t cs, const int64_t* targets, int64_t ts,
                    const float* hsq, int64_t hs, int64_t N, int64_t C, int64_t ignore_index, float eps,
                    CeScoresPointers out, E* emb, int64_t& bad_row) {
  const bool direct = std::is_same_v<T, float> && cs == 1;  // read blocks in place
  const int64_t grain_rows = std::max<int64_t>(1, 16384 / C);
#pragma omp parallel if (N > grain_rows)
  {
    std::vector<float> buf(direct ? 0 : kBlock);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const T* row = logits + r * rs;
      const int64_t y = targets[r * ts];
      const bool labelled = y != ignore_index;
      if (labelled && !(y >= 0 && y < C)) {
#pragma omp critical(datadiet_ce_bad_row)
        bad_row = std::min(bad_row, r);
        continue;
      }
      const int64_t y_excl = labelled ? y : -1;
      const float pivot = ce::pivot_of(static_cast<float>(row[0]));
      RowState st = ce::empty_state();
      for (int64_t b0 = 0; b0 < C; b0 += kBlock) {
        const int n = static_cast<int>(std::min<int64_t>(kBlock, C - b0));
        const float* z = nullptr;
        if constexpr (std::is_same_v<T, float>) {
          if (direct) z = row + b0;
        }
        if (!direct) {
          for (int j = 0; j < n; ++j) buf[j] = static_cast<float>(row[(b0 + j) * cs]);
          z = buf.data();
        }
        fold_block(st, z, n, b0, y_excl, pivot);
      }
      ce::RowInfo info;
      info.labelled = labelled;
      info.z_y = labelled ? static_cast<float>(row[y * cs]) : 0.f;
      info.has_features = hsq != nullptr;
      info.feature_sqnorm = hsq ? hsq[r * hs] : 0.f;
      info.pivot = pivot;
      const ce::Finished f = ce::finalize(st, info, C, eps, y);
      out.loss[r] = f.scores.loss;
      out.el2n[r] = f.scores.el2n;
      out.grad_norm[r] = f.scores.grad_norm;
      out.confidence[r] = f.scores.confidence;
      out.margin[r] = f.scores.margin;
      out.entropy[r] = f.scores.entropy;
      out.correct[r] = f.scores.correct;
      if (emb) {
        E* e = emb + r * C;
        if (!labelled || f.bad) {
          const E fill = static_cast<E>(ce::embedding_value(f, 0.f, -1, y, labelled, eps, C));
          std::fill(e, e + C, fill);
          continue;
        }
        const float m = f.m, inv_s = f.inv_s, a = f.a;
#pragma omp simd
        for (int64_t j = 0; j < C; ++j)
          e[j] = static_cast<E>(exp_nonpositive(static_cast<float>(row[j * cs]) - m) * inv_s - a);
        e[y] = static_cast<E>(ce::embedding_value(f, info.z_y, y, y, true, eps, C));
      }
    }
  }
}

template <typename T>
void dispatch_embedding(const StableTensor& logits, const int64_t* tg, int64_t ts, const float* hsq,
                        int64_t hs, int64_t ignore_index, float eps, CeScoresPointers out, StableTensor* emb,
                        int64_t& bad_row) {
  const T* z = logits.const_data_ptr<T>();
  const int64_t N = logits.size(0), C = logits.size(1), rs = logits.stride(0), cs = logits.stride(1);
  if (!emb) {
    ce_scores_rows<T, float>(z, rs, cs, tg, ts, hsq, hs, N, C, ignore_index, eps, out, nullptr, bad_row);
    return;
  }
  dispatch_float(emb->scalar_type(), [&](auto tag) {
    ce_scores_rows(z, rs, cs, tg, ts, hsq, hs, N, C, ignore_index, eps, out,
                   emb->mutable_data_ptr<decltype(tag)>(), bad_row);
  });
}

}  // namespace

CeScoresOutput ce_scores_cpu(const StableTensor& logits, const StableTensor& targets,
                             const std::optional<StableTensor>& feature_sqnorm, int64_t ignore_index,
                             double label_smoothing, std::optional<ScalarType> embedding_dtype) {
  check_ce_scores_args(logits, targets, feature_sqnorm, label_smoothing, embedding_dtype);
  DD_CHECK(logits.is_cpu(), "ce_scores", "the CPU kernel got logits on another device");
  const int64_t N = logits.size(0), C = logits.size(1);
  CeScoresOutput result = allocate_ce_scores(logits, embedding_dtype);
  const CeScoresPointers out = score_pointers(result);
  const int64_t* tg = targets.const_data_ptr<int64_t>();
  const float* hsq = feature_sqnorm ? feature_sqnorm->const_data_ptr<float>() : nullptr;
  const int64_t hs = feature_sqnorm ? feature_sqnorm->stride(0) : 0;
  StableTensor* emb = embedding_dtype ? &std::get<7>(result) : nullptr;
  const float eps = static_cast<float>(label_smoothing);
  int64_t bad_row = N;
  dispatch_float(logits.scalar_type(), [&](auto tag) {
    dispatch_embedding<decltype(tag)>(logits, tg, targets.stride(0), hsq, hs, ignore_index, eps, out, emb, bad_row);
  });
  DD_CHECK(bad_row == N, "ce_scores", "targets[", bad_row, "] = ", tg[bad_row * targets.stride(0)],
           " is not a class index in [0, ", C, ") nor ignore_index = ", ignore_index);
  return result;
}

}  // namespace datadiet
