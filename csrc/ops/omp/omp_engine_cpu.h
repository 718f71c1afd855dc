// Orthogonal matching pursuit for one problem with a growing Cholesky factor (the CPU
// engine behind datadiet::omp):
//
//   min_w ‖Σ_{s∈S} w_s a_s − b‖² + λ‖w‖²,  |S| ≤ k,  optionally w ≥ 0.
//
// One iteration: pick j = argmax c_j (w ≥ 0) or argmax |c_j| among atoms never picked,
// c the correlations of the atoms with the current residual; append j's row to the
// Cholesky factor of Q = G_SS + λI from the inner products ⟨a_s, a_j⟩, s ∈ S; solve Q w = p,
// p_s = ⟨a_s, b⟩ (y = L⁻¹p is kept and grows by one O(|S|) entry per atom; the append's row and
// the back substitution Lᵀw = y are the O(|S|²) parts); with w ≥ 0 asked and a negative
// coefficient, run Lawson–Hanson's active-set NNLS on the support (warm-started at the previous weights, the factor downdated and updated
// as atoms leave and re-enter the passive set) and drop the atoms it leaves at zero (they
// are never picked again); take the new residual, and only then the correlations. An atom
// with a too-small pivot, or whose solve would raise the objective ‖b − Σ w_s a_s‖² + λ‖w‖², is
// rejected and the state restored (omp_rules.h). No A_S A_Sᵀ + λI is rebuilt and no least-squares problem re-solved:
// an iteration is O(|S|·d + |S|²) plus the source's correlation pass.
//
// The atom source (Source) supplies the data-dependent pieces:
//   int64_t size()                                 atoms in the problem
//   void target(float* c0, double* b2)             c0 = ⟨a_i, b⟩ for all i, b2 = ‖b‖²
//   double inner(int64_t i, int64_t j)             ⟨a_i, a_j⟩
//   void column(int64_t j, const int64_t* S, int64_t m, double* q)   q_s = ⟨a_{S_s}, a_j⟩
//   double update(const int64_t* S, const double* w, int64_t m, const double* p, double penalty,
//                 double objective, float* c)
//       returns r2 = ‖b − Σ w_s a_s‖² (p_s = ⟨a_{S_s}, b⟩) and, when keeps(r2, penalty, objective)
//       (omp_rules.h: the solve is kept), sets the correlations c = A (b − Σ w_s a_s)
// `parallel` lets the source spread its loops over the OpenMP team.
//
// Stops (omp_rules.h) at k atoms, at ‖r‖ ≤ tol·‖b‖, when no unpicked atom correlates above the
// floor, or (λ = 0) when the support has as many atoms as the atoms have dimensions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/omp/cholesky.h"
#include "ops/omp/omp.h"
#include "ops/omp/omp_rules.h"

namespace datadiet {
namespace omp {

struct Solution {
  std::vector<int64_t> support;  // local atom indices, in support order
  std::vector<double> weights;
  double residual = 0.0;  // ‖b − Σ w_s a_s‖
  int64_t iterations = 0;
  int64_t stop = kStopBudget;
  int64_t rejected = 0;  // picks not admitted: dependent, or raising the objective
};

struct Options {
  int64_t budget;
  double lam;
  bool positive;
  double tol;
  int64_t dimension;  // of the atoms (λ = 0: no support grows past it)
};

template <typename Source>
class Solver {
 public:
  Solver(Source& src, const Options& opt)
      : src_(src), n_(src.size()), opt_(opt), chol_(opt.budget), c0_(n_), c_(n_), picked_(n_, 0) {}

  Solution run() {
    Solution out;
    src_.target(c0_.data(), &b2_);
    r2_ = objective_ = b2_;
    if (opt_.budget > 0 && n_ > 0 && b2_ > 0.0) out.stop = iterate(out);
    else out.stop = opt_.budget == 0 ? kStopBudget : kStopTolerance;
    out.residual = std::sqrt(std::max(r2_, 0.0));
    out.support = support_;
    out.weights = w_;
    return out;
  }

 private:
  int64_t size() const { return static_cast<int64_t>(support_.size()); }
  double score(float c) const { return opt_.positive ? c : std::fabs(c); }

  Stop iterate(Solution& out) {
    c_ = c0_;
    double best0 = 0.0;
    for (int64_t i = 0; i < n_; ++i) best0 = std::max(best0, score(c0_[i]));
    const double floor = kMinCorrelation * best0, stop2 = opt_.tol * opt_.tol * b2_;
    while (true) {
      if (size() >= opt_.budget) return kStopBudget;
      if (r2_ <= stop2) return kStopTolerance;
      if (opt_.lam == 0.0 && size() >= opt_.dimension) return kStopRank;
      const int64_t j = pick(floor);
      if (j < 0) return kStopCorrelation;
      ++out.iterations;
      picked_[j] = 1;
      if (!advance(j)) ++out.rejected;
    }
  }

  int64_t pick(double floor) const {
    int64_t j = -1;
    double best = floor;
    for (int64_t i = 0; i < n_; ++i)
      if (!picked_[i] && score(c_[i]) > best) best = score(c_[i]), j = i;
    return j;
  }

  // Admits atom j and re-solves; false (state unchanged) when j is dependent or the solve
  // would raise the objective.
  bool advance(int64_t j) {
    const int64_t m0 = size();
    if (!admit(j)) return false;
    const std::vector<int64_t> support0(support_.begin(), support_.end() - 1);
    const std::vector<double> w0 = w_, y0 = y_;
    y_.push_back(chol_.forward_last(y_.data(), c0_[j]));
    w_.push_back(0.0);  // the NNLS warm start: previous weights, the new atom at 0
    const bool reshaped = solve_weights(m0);
    double penalty = 0.0;
    for (const double v : w_) penalty += v * v;
    penalty *= opt_.lam;
    const double r2 = src_.update(support_.data(), w_.data(), size(), rhs().data(), penalty, objective_, c_.data());
    if (!keeps(r2, penalty, objective_)) {
      if (reshaped) chol_.restore();
      else chol_.truncate(m0);
      support_ = support0;
      w_ = w0;
      y_ = y0;
      return false;
    }
    r2_ = r2;
    objective_ = r2 + penalty;
    return true;
  }

  // Appends atom j to the support and the factor; false if its pivot is too small.
  bool admit(int64_t j) {
    std::vector<double> q(support_.size());
    src_.column(j, support_.data(), size(), q.data());
    if (!chol_.append(q.data(), src_.inner(j, j) + opt_.lam, kPivotEps)) return false;
    support_.push_back(j);
    return true;
  }

  std::vector<double> rhs() const {
    std::vector<double> p(support_.size());
    for (size_t s = 0; s < support_.size(); ++s) p[s] = c0_[support_[s]];
    return p;
  }

  std::vector<double> unconstrained() const {
    std::vector<double> z(support_.size());
    chol_.solve(rhs().data(), z.data());
    return z;
  }

  static bool all_positive(const std::vector<double>& z) {
    return std::all_of(z.begin(), z.end(), [](double v) { return v > 0.0; });
  }

  // The weights on the support from y_ = L⁻¹p; true when the NNLS ran (the factor saved at its
  // first m0 rows first, as the NNLS reshapes it; y_ is then rebuilt for the support it leaves).
  bool solve_weights(int64_t m0) {
    std::vector<double> z = y_;
    chol_.backward(z.data());
    if (!opt_.positive || all_positive(z)) {
      w_ = z;
      return false;
    }
    chol_.save(m0);
    nnls(z);
    y_ = rhs();
    chol_.forward(y_.data());
    return true;
  }

  // Lawson–Hanson on the support: passive set = support_ (factor in that order), zero
  // set `zero`; x starts at the previous weights, the newest atom at 0 (feasible).
  void nnls(std::vector<double> z) {
    std::vector<double> x = w_;
    std::vector<int64_t> zero;
    const int64_t guard_max = nnls_guard(size());
    for (int64_t guard = 0; guard < guard_max; ++guard) {
      if (all_positive(z)) {
        x = z;
        if (!readmit(x, zero)) break;  // no zero-set atom has a positive gradient: optimal
        z = unconstrained();
        continue;
      }
      // Step from x towards z until the first coordinate reaches zero; move it (and any
      // other at zero) to the zero set.
      double alpha = 1.0;
      size_t first = 0;
      for (size_t s = 0; s < z.size(); ++s) {
        if (z[s] > 0.0) continue;
        const double a = x[s] - z[s] > 0.0 ? x[s] / (x[s] - z[s]) : 0.0;
        if (a <= alpha) alpha = a, first = s;
      }
      for (size_t s = 0; s < z.size(); ++s) x[s] += alpha * (z[s] - x[s]);
      x[first] = 0.0;
      for (int64_t s = size() - 1; s >= 0; --s) {
        if (x[s] > 0.0) continue;
        zero.push_back(support_[s]);
        chol_.remove(s);
        support_.erase(support_.begin() + s);
        x.erase(x.begin() + s);
      }
      z = unconstrained();
    }
    w_ = x;  // atoms left in the zero set are dropped (and stay picked)
  }

  // Moves the zero-set atom with the largest positive gradient ⟨a_i, b⟩ − (Q x)_i back
  // into the passive set; false when there is none.
  bool readmit(std::vector<double>& x, std::vector<int64_t>& zero) {
    while (!zero.empty()) {
      int64_t best = -1;
      double best_grad = kReadmitEps * std::sqrt(b2_);
      for (size_t t = 0; t < zero.size(); ++t) {
        double grad = c0_[zero[t]];
        for (size_t s = 0; s < support_.size(); ++s) grad -= src_.inner(zero[t], support_[s]) * x[s];
        if (grad > best_grad) best_grad = grad, best = static_cast<int64_t>(t);
      }
      if (best < 0) return false;
      const int64_t atom = zero[best];
      zero.erase(zero.begin() + best);
      if (admit(atom)) {
        x.push_back(0.0);
        return true;
      }
    }
    return false;
  }

  Source& src_;
  const int64_t n_;
  const Options opt_;
  Cholesky chol_;
  double b2_ = 0.0, r2_ = 0.0;  // ‖b‖², the residual² of the current weights
  double objective_ = 0.0;      // their r2_ + λ‖w‖² (rule 2 compares against it)
  std::vector<float> c0_, c_;    // correlations with the target / the residual
  std::vector<uint8_t> picked_;  // never pick twice
  std::vector<int64_t> support_;
  std::vector<double> w_;
  std::vector<double> y_;  // L⁻¹p over the support (p_s = ⟨a_s, b⟩)
};

template <typename Source>
Solution solve(Source& src, const Options& opt) {
  return Solver<Source>(src, opt).run();
}

}  // namespace omp

// Runs solve(g) -> omp::Solution for every problem — in parallel, one per thread, when
// there are several (a single problem parallelises inside) — and writes the outputs:
// global indices (offsets[g] + local) padded with -1, weights padded with 0, and per problem
// the residual, iterations, stop reason and rejected picks.
template <typename Solve>
void solve_problems(OmpOutput& out, const std::vector<int64_t>& offsets, const std::vector<int64_t>& budgets,
                    const Solve& solve) {
  const int64_t problems = static_cast<int64_t>(budgets.size());
  int64_t* idx = std::get<0>(out).mutable_data_ptr<int64_t>();
  float* wts = std::get<1>(out).mutable_data_ptr<float>();
  float* res = std::get<2>(out).mutable_data_ptr<float>();
  int64_t* its = std::get<3>(out).mutable_data_ptr<int64_t>();
  int64_t* stop = std::get<4>(out).mutable_data_ptr<int64_t>();
  int64_t* rejected = std::get<5>(out).mutable_data_ptr<int64_t>();
  std::vector<int64_t> out_at(problems + 1, 0);
  for (int64_t g = 0; g < problems; ++g) out_at[g + 1] = out_at[g] + budgets[g];
  auto one = [&](int64_t g) {
    const omp::Solution sol = solve(g);
    const int64_t found = static_cast<int64_t>(sol.support.size());
    for (int64_t s = 0; s < budgets[g]; ++s) {
      idx[out_at[g] + s] = s < found ? offsets[g] + sol.support[s] : -1;
      wts[out_at[g] + s] = s < found ? static_cast<float>(sol.weights[s]) : 0.0f;
    }
    res[g] = static_cast<float>(sol.residual);
    its[g] = sol.iterations;
    stop[g] = sol.stop;
    rejected[g] = sol.rejected;
  };
  if (problems == 1) {
    one(0);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < problems; ++g) one(g);
}

}  // namespace datadiet
