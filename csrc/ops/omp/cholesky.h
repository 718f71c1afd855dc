// A growing and shrinking Cholesky factor L (lower, row-major, capacity x capacity) of
// the ridge Gram matrix Q = G_SS + λI of OMP's support S, in double precision.
//
// append: a new atom's column q = Q[S, j] gives l = L⁻¹q and the diagonal
//   sqrt(Q_jj - ‖l‖²) — O(m²) instead of refactoring (O(m³)).
// remove: dropping row/column p leaves the leading block, and the trailing block
//   L33 must absorb the removed column l32: L33' L33'ᵀ = L33 L33ᵀ + l32 l32ᵀ, a
//   rank-one update by Givens-like rotations — O(m²).
// solve: Q w = p by two triangular solves (forward: L y = p, backward: Lᵀ w = y).
// save / restore: a copy of the factor to return to when a solve that reshaped the support
// (NNLS) is rejected; truncate(m) returns to the first m atoms (rows depend only on earlier ones).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/simd_cpu.h"

namespace datadiet {
namespace omp {

class Cholesky {
 public:
  explicit Cholesky(int64_t capacity) : cap_(capacity), L_(static_cast<size_t>(capacity * capacity)) {}

  int64_t size() const { return m_; }

  void truncate(int64_t m) { m_ = m; }

  // Keeps the first m rows (their m(m+1)/2 entries); restore() brings them back, size m.
  void save(int64_t m) {
    saved_.resize(static_cast<size_t>(m * cap_));
    for (int64_t i = 0; i < m; ++i) std::copy(at(i), at(i) + i + 1, saved_.data() + i * cap_);
    saved_m_ = m;
  }
  void restore() {
    for (int64_t i = 0; i < saved_m_; ++i) std::copy(saved_.data() + i * cap_, saved_.data() + i * cap_ + i + 1, at(i));
    m_ = saved_m_;
  }

  // Appends an atom with Q[S, j] = q[0..m) and Q_jj = qjj. Returns false (and leaves
  // the factor unchanged) when the atom is numerically dependent on the support.
  bool append(const double* q, double qjj, double rel_eps) {
    double* row = at(m_);
    double norm2 = 0.0;
    for (int64_t c = 0; c < m_; ++c) {
      row[c] = (q[c] - dot(at(c), row, c)) / at(c)[c];
      norm2 += row[c] * row[c];
    }
    const double d2 = qjj - norm2;
    if (!(d2 > rel_eps * qjj)) return false;
    row[m_] = std::sqrt(d2);
    ++m_;
    return true;
  }

  void remove(int64_t p) {
    std::vector<double> x(static_cast<size_t>(m_ - p - 1));
    for (int64_t i = p + 1; i < m_; ++i) {
      x[i - p - 1] = at(i)[p];
      double* dst = at(i - 1);
      const double* src = at(i);
      for (int64_t c = 0; c < p; ++c) dst[c] = src[c];
      for (int64_t c = p + 1; c <= i; ++c) dst[c - 1] = src[c];
    }
    --m_;
    for (int64_t k = p; k < m_; ++k) {  // rank-one update of the trailing block
      double& lkk = at(k)[k];
      const double xk = x[k - p];
      const double r = std::hypot(lkk, xk), c = r / lkk, s = xk / lkk;
      lkk = r;
      for (int64_t i = k + 1; i < m_; ++i) {
        double& lik = at(i)[k];
        lik = (lik + s * x[i - p]) / c;
        x[i - p] = c * x[i - p] - s * lik;
      }
    }
  }

  // w = Q⁻¹ p over the current support (p and w of length size()): forward, then backward.
  void solve(const double* p, double* w) const {
    std::copy(p, p + m_, w);
    forward(w);
    backward(w);
  }

  // y ← L⁻¹ y in place, by rows: y_i = (y_i − L[i, :i]·y[:i]) / L_ii.
  void forward(double* y) const {
    for (int64_t i = 0; i < m_; ++i) y[i] = (y[i] - dot(at(i), y, i)) / at(i)[i];
  }

  // The last entry of L⁻¹ p given the others (y of length size() − 1): what forward() computes
  // for the newest row, so a support that only grows keeps L⁻¹ p in O(m) per atom.
  double forward_last(const double* y, double p_last) const {
    const double* row = at(m_ - 1);
    return (p_last - dot(row, y, m_ - 1)) / row[m_ - 1];
  }

  // w ← L⁻ᵀ w in place, by columns (each step an axpy over a row of L).
  void backward(double* w) const {
    for (int64_t i = m_ - 1; i >= 0; --i) {
      w[i] /= at(i)[i];
      const double wi = w[i];
      const double* li = at(i);
#pragma omp simd
      for (int64_t t = 0; t < i; ++t) w[t] -= li[t] * wi;
    }
  }

 private:
  static double dot(const double* x, const double* y, int64_t len) { return simd::dot(x, y, len); }

  double* at(int64_t r) { return L_.data() + r * cap_; }
  const double* at(int64_t r) const { return L_.data() + r * cap_; }

  int64_t cap_, m_ = 0, saved_m_ = 0;
  std::vector<double> L_, saved_;
};

}  // namespace omp
}  // namespace datadiet
