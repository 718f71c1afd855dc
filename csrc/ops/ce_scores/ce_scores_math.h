// Per-row math of datadiet::ce_scores, shared by the CPU and CUDA kernels.
//
// A row of logits z[0..C) with target y is summarised by a RowState that can be
// built one element at a time (push) or from partial states (merge), so each
// backend can traverse the row however it likes (CPU: SIMD blocks + scalar tail;
// CUDA: one warp per row, lanes strided, butterfly merge) and still compute
// identical formulas. Everything is relative to the running max m (online
// softmax), so each logit is read once and exp'ed once.
//
// Sums exclude the target class ("off-label") so that, when p is close to one-hot,
// 1 - p_y = s1 / S and the EL2N norm come out without the catastrophic
// cancellation of Σp² - 2p_y + 1:
//   S  = s1 + exp(z_y - m)                         (softmax normaliser)
//   ‖p - onehot‖² = (s1² + s2) / S²
// With label smoothing ε the target is q = (1-ε)·onehot + ε/C, and with a = ε/C:
//   Σ_{j≠y} (p_j - a)² = s2/S² - 2a·s1/S + (C-1)a²,   e_y = ε(C-1)/C - s1/S.
// Entropy: H = log S - Σ_j p_j (z_j - m) = log S - (t + e_y'(z_y - m)) / S.
// Loss:    logsumexp(z) - (1-ε) z_y - ε·mean(z),  logsumexp = m + log S,
//          log S = log1p(s1 + expm1(z_y - m)) (no rounding of S to 1 when p_y ≈ 1).
//
// Non-finite policy (documented in the Python wrapper):
//   -inf logits are masked classes (probability 0). A NaN or +inf logit anywhere in
//   the row, or a row of only -inf, makes every float score of that row NaN (and
//   correct = false). sum_z = Σ (z_j - pivot) detects this for free: it is NaN or
//   +inf exactly when such a logit is present (pivot = first logit if finite).
//   Rows whose target is ignore_index have loss = el2n = grad_norm = 0 and
//   correct = false (they contribute no gradient); label-free scores are kept.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace datadiet {
namespace ce {

constexpr float kInf = INFINITY;
constexpr int64_t kNoIndex = INT64_MAX;

struct RowState {
  float m;         // running max logit (-inf while empty)
  float s1;        // Σ_{j≠y} exp(z_j - m)
  float s2;        // Σ_{j≠y} exp(2 (z_j - m))
  float t;         // Σ_{j≠y} exp(z_j - m) (z_j - m)
  float sum_z;     // Σ_j (z_j - pivot); NaN or +inf flags a bad row
  float second;    // second-largest logit, duplicates of the max included
  int64_t argmax;  // first index of the max
};

DD_HD RowState empty_state() { return RowState{-kInf, 0.f, 0.f, 0.f, 0.f, -kInf, kNoIndex}; }

DD_HD float pivot_of(float first_logit) {
  return (first_logit > -kInf && first_logit < kInf) ? first_logit : 0.f;
}

// Fold logit z at column j into s. y_excl is the target column, or -1 for rows
// without a label (ignored / out of range), so that no column is excluded.
DD_HD void push(RowState& s, float z, int64_t j, int64_t y_excl, float pivot) {
  s.sum_z += z - pivot;
  const bool off_label = j != y_excl;
  if (z > s.m) {
    // New max: rescale the sums to it. An empty state (m = -inf) has zero sums;
    // skip the rescale there, (-inf) * 0 would be NaN.
    if (s.m > -kInf) {
      const float d = s.m - z;  // < 0
      const float r = expf(d);
      s.t = r * (s.t + d * s.s1);
      s.s1 *= r;
      s.s2 *= r * r;
    }
    s.second = s.m;
    s.m = z;
    s.argmax = j;
    if (off_label) {  // exp(z - m) = 1, (z - m) = 0
      s.s1 += 1.f;
      s.s2 += 1.f;
    }
    return;
  }
  if (z > s.second) s.second = z;
  if (!(s.m > -kInf) || !off_label) return;  // all -inf so far, or the target column
  const float d = z - s.m;
  const float e = expf(d);
  s.s1 += e;
  s.s2 += e * e;
  if (e > 0.f) s.t += e * d;  // z = -inf: e = 0 and d = -inf; the term is 0
}

// Combine the states of two disjoint column sets. Commutative (ties in the max go
// to the lower index), so a butterfly reduction leaves every lane the same state.
DD_HD RowState merge(const RowState& a, const RowState& b) {
  const bool a_wins = a.m > b.m || (a.m == b.m && a.argmax < b.argmax);
  const RowState& w = a_wins ? a : b;
  const RowState& l = a_wins ? b : a;
  RowState o;
  o.sum_z = a.sum_z + b.sum_z;
  o.m = w.m;
  o.argmax = w.argmax;
  o.second = w.second > l.m ? w.second : l.m;
  o.s1 = w.s1;
  o.s2 = w.s2;
  o.t = w.t;
  if (l.m > -kInf) {  // l contributes; w.m >= l.m is finite here
    const float d = l.m - w.m;
    const float r = expf(d);
    o.s1 += r * l.s1;
    o.s2 += r * r * l.s2;
    if (r > 0.f) o.t += r * (l.t + d * l.s1);
  }
  return o;
}

struct RowInfo {
  float z_y;           // the target's logit (unused when !labelled)
  bool labelled;       // target is a class index (not ignore_index, in range)
  bool has_features;     // false: bias-only gradient norm
  float feature_sqnorm;  // ‖h‖² of the penultimate features (when has_features)
  float pivot;
};

struct Scores {
  float loss, el2n, grad_norm, confidence, margin, entropy;
  bool correct;
};

struct Finished {
  Scores scores;
  float m, inv_s, a, off;  // what embedding_value needs
  bool bad;
};

DD_HD Finished finalize(const RowState& s, const RowInfo& row, int64_t C, float eps, int64_t y) {
  Finished f;
  const float nan = NAN;
  f.bad = !(s.sum_z < kInf) || !(s.m > -kInf);
  // log S through log1p(s1 + expm1(z_y - m)): exact when the target is the max and p_y
  // is within 1e-7 of 1, where logf(S) would round S to 1 and the loss to 0.
  const float ey_m1 = row.labelled ? expm1f(row.z_y - s.m) : -1.f;
  const float ey = ey_m1 + 1.f;
  const float S = s.s1 + ey;
  const float inv_s = 1.f / S;
  const float log_s = row.labelled ? log1pf(s.s1 + ey_m1) : logf(s.s1);
  const float a = eps / static_cast<float>(C);
  const float off = s.s1 * inv_s;  // 1 - p_y, without cancellation

  Scores& o = f.scores;
  o.confidence = inv_s;  // exp(m - m) / S
  o.margin = (1.f - expf(s.second - s.m)) * inv_s;
  const float t_all = s.t + (ey > 0.f ? ey * (row.z_y - s.m) : 0.f);
  o.entropy = log_s - t_all * inv_s;
  if (row.labelled) {
    // log S + (1-ε)(m - z_y) + ε(m - mean z): both terms >= 0 (or +inf with -inf logits, never
    // inf - inf), and the small log S is added last so it is not rounded away against m.
    const float to_target = eps < 1.f ? (1.f - eps) * (s.m - row.z_y) : 0.f;
    const float to_mean = eps > 0.f ? eps * (s.m - (row.pivot + s.sum_z / static_cast<float>(C))) : 0.f;
    o.loss = log_s + (to_target + to_mean);
    const float q2 = s.s2 * inv_s * inv_s;
    const float ey_err = eps * static_cast<float>(C - 1) / static_cast<float>(C) - off;
    float sq = q2 - 2.f * a * off + static_cast<float>(C - 1) * a * a + ey_err * ey_err;
    sq = sq > 0.f ? sq : 0.f;
    o.el2n = sqrtf(sq);
    o.grad_norm = row.has_features ? o.el2n * sqrtf(row.feature_sqnorm + 1.f) : o.el2n;
    o.correct = s.argmax == y;
  } else {
    o.loss = o.el2n = o.grad_norm = 0.f;
    o.correct = false;
  }
  if (f.bad) {
    o.confidence = o.margin = o.entropy = nan;
    if (row.labelled) o.loss = o.el2n = o.grad_norm = nan;
    o.correct = false;
  }
  f.m = s.m;
  f.inv_s = inv_s;
  f.a = a;
  f.off = off;
  return f;
}

// e_j = p_j - q_j, the bias gradient of the row (the GradMatch atom). The target's
// entry uses the cancellation-free form ε(C-1)/C - (1 - p_y).
DD_HD float embedding_value(const Finished& f, float z, int64_t j, int64_t y, bool labelled, float eps,
                            int64_t C) {
  if (f.bad && labelled) return NAN;
  if (!labelled) return 0.f;
  if (j == y) return eps * static_cast<float>(C - 1) / static_cast<float>(C) - f.off;
  return expf(z - f.m) * f.inv_s - f.a;
}

}  // namespace ce
}  // namespace datadiet
