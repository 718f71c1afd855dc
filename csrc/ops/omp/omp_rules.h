// The rules every OMP engine applies (CPU: omp_engine_cpu.h, CUDA: omp_steps_cuda.cuh; the
// Triton engine kernels/omp.py and the reference python/datadiet/reference/omp.py copy them).
//
// Admission. A picked atom j enters the support only if
//   1. its Cholesky pivot is large against its own norm: the Schur complement
//      d² = Q_jj − ‖L⁻¹ Q[S, j]‖² of Q = G_SS + λI must exceed kPivotEps · Q_jj, i.e. the
//      squared sine of its angle to span(S) (λ = 0) must exceed kPivotEps. The Gram entries are
//      float32 dot products, each off by a few 2⁻²⁴ ≈ 6e-8 of ‖a_i‖‖a_j‖ (more over long rows),
//      and the pivot inherits that error; kPivotEps = 1e-6 (sin θ > 1e-3) keeps the computed
//      pivot an order of magnitude above it. Admitting atoms below it gives weights that no
//      longer solve the problem (the residual jumped past ‖b‖ before this rule);
//   2. the solve with it does not raise the objective the solver minimises,
//        F(w) = ‖b − Σ w_s a_s‖² + λ‖w‖²
//      (dense: the explicit residual in float64; factorised: bᵀb − 2wᵀp + wᵀG_SS w from the stored
//      Gram columns, float64 sums; plus λ·Σ w_s² — keeps()). With exact arithmetic adding an atom
//      never raises F: the previous weights with a 0 for the new atom are still feasible (w ≥ 0
//      included), and the ridge solve / NNLS is the minimum over the larger support. So for λ > 0
//      the test is only a guard against rounding (a float32 Gram column of a nearly dependent atom),
//      and a pick that trades residual for a smaller ‖w‖ is kept. For λ = 0, F is the residual.
//      Otherwise the support, weights and factor return to their state before the pick.
// A rejected atom counts as an iteration, not towards the budget, and is never picked again.
// So F never rises from one iteration to the next, the residual never exceeds ‖b‖ (‖r‖² ≤ F ≤
// F(0) = ‖b‖²), and a run with a larger budget passes through every state of a run with a
// smaller one. (The residual alone may rise when λ > 0: the solver minimises F, not ‖r‖.)
//
// Stopping (the op's `stop` output, per problem):
//   kStopBudget        the support reached the budget;
//   kStopTolerance     ‖r‖ ≤ tol·‖b‖ (a zero target stops here at once);
//   kStopCorrelation   no unpicked atom correlates (w ≥ 0: positively) above
//                      kMinCorrelation of the largest initial correlation — every admissible
//                      atom is used up;
//   kStopRank          λ = 0 and the support has as many atoms as the atoms have dimensions:
//                      every further atom is dependent on it.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace datadiet {
namespace omp {

constexpr double kPivotEps = 1e-6;        // rule 1: relative Schur complement of a float32 Gram
constexpr double kMinCorrelation = 1e-6;  // the pick floor, relative to the largest initial correlation
constexpr double kReadmitEps = 1e-12;     // NNLS: smallest gradient (relative to ‖b‖) that re-admits an atom

enum Stop : int64_t { kStopBudget = 0, kStopTolerance = 1, kStopCorrelation = 2, kStopRank = 3 };

// Rule 2's verdict on a solve with residual² r2 and penalty λ·Σ w_s², against the objective
// F of the current weights (every engine and atom source asks this one question, so a source
// that skips the correlation pass on a rejection agrees with the engine that undoes the pick).
DD_HD bool keeps(double r2, double penalty, double objective) { return r2 + penalty <= objective; }

// The NNLS iteration guard for a support of m atoms when the solve starts (independent of the
// budget, so the budget only decides where a run stops).
constexpr int64_t nnls_guard(int64_t m) { return 6 * m + 10; }

}  // namespace omp
}  // namespace datadiet
