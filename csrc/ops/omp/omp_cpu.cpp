// datadiet::omp on CPU with dense atoms: problems in parallel (one per thread) when
// there are several, one problem's correlation pass across the threads when there is
// one. The algorithm is in omp_engine_cpu.h.
#include <omp.h>

#include <cmath>
#include <limits>

#include "common/simd_cpu.h"
#include "ops/omp/omp.h"
#include "ops/omp/omp_engine_cpu.h"

namespace datadiet {
namespace {

using simd::dot;

// Atoms are the rows of a dense [n, d] block; the residual is explicit, r = b − Σ w_s a_s
// (double), and the correlations c = A r — one pass over the atoms.
struct DenseAtoms {
  const float* a;
  const float* b;
  int64_t n, d;
  bool parallel;
  std::vector<double> r = std::vector<double>(static_cast<size_t>(d));
  std::vector<float> rf = std::vector<float>(static_cast<size_t>(d));

  int64_t size() const { return n; }
  const float* row(int64_t i) const { return a + i * d; }

  void target(float* c0, double* b2) const {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < n; ++i) c0[i] = dot(row(i), b, d);
    double sum = 0.0;
    for (int64_t t = 0; t < d; ++t) sum += static_cast<double>(b[t]) * b[t];
    *b2 = sum;
  }

  double inner(int64_t i, int64_t j) const { return dot(row(i), row(j), d); }

  void column(int64_t j, const int64_t* support, int64_t m, double* q) const {
#pragma omp parallel for schedule(static) if (parallel && m * d > 65536)
    for (int64_t s = 0; s < m; ++s) q[s] = dot(row(support[s]), row(j), d);
  }

  // r[lo, hi) = b − Σ_s w_s a_s (the slice stays in L1 across the support).
  void residual_slice(const int64_t* support, const double* w, int64_t m, int64_t lo, int64_t hi,
                      double* rr) const {
    for (int64_t t = lo; t < hi; ++t) rr[t] = b[t];
    for (int64_t s = 0; s < m; ++s) {
      const float* as = row(support[s]);
      const double ws = w[s];
#pragma omp simd
      for (int64_t t = lo; t < hi; ++t) rr[t] -= ws * as[t];
    }
  }

  // ‖r‖², r = b − Σ w_s a_s in float64, and when the solve is kept (omp::keeps) the
  // correlations c = A r, in one parallel region: each thread builds a slice of r (the slice
  // stays in L1 across the support), then after a barrier every thread sums the slices' ‖·‖² in
  // the same order and, on the same verdict, takes a share of the rows.
  double update(const int64_t* support, const double* w, int64_t m, const double*, double penalty, double objective,
                float* c) {
    double* rr = r.data();
    float* rp = rf.data();
    std::vector<double> part(static_cast<size_t>(omp_get_max_threads()), 0.0);
    double r2 = 0.0;
#pragma omp parallel if (parallel)
    {
      const int threads = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t lo = d * me / threads, hi = d * (me + 1) / threads;
      residual_slice(support, w, m, lo, hi, rr);
      double sq = 0.0;
      for (int64_t t = lo; t < hi; ++t) {
        sq += rr[t] * rr[t];
        rp[t] = static_cast<float>(rr[t]);
      }
      part[me] = sq;
#pragma omp barrier
      double total = 0.0;
      for (int t = 0; t < threads; ++t) total += part[t];
      if (me == 0) r2 = total;
      if (omp::keeps(total, penalty, objective)) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) c[i] = dot(row(i), rp, d);
      }
    }
    return r2;
  }
};

void check_finite(const char* name, const StableTensor& t) {
  const float* x = t.const_data_ptr<float>();
  const int64_t n = t.numel();
  int64_t bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for reduction(min : bad)
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) bad = std::min(bad, i);
  DD_CHECK(bad == std::numeric_limits<int64_t>::max(), "omp", name, " must be finite, got ", x[bad], " at row ",
           bad / t.size(1), ", column ", bad % t.size(1));
}

}  // namespace

OmpOutput omp_cpu(const StableTensor& atoms, const StableTensor& targets, std::vector<int64_t> offsets,
                  std::vector<int64_t> budgets, double lam, bool positive, double tol) {
  const int64_t total = check_omp_args(atoms, targets, offsets, budgets, lam, tol);
  check_finite("atoms", atoms);
  check_finite("targets", targets);
  const int64_t problems = static_cast<int64_t>(budgets.size()), d = atoms.size(1);
  OmpOutput out = allocate_omp(atoms, total, problems);
  const float* a = atoms.const_data_ptr<float>();
  const float* b = targets.const_data_ptr<float>();
  const bool one = problems == 1;
  solve_problems(out, offsets, budgets, [&](int64_t g) {
    DenseAtoms src{a + offsets[g] * d, b + g * d, offsets[g + 1] - offsets[g], d, one};
    return omp::solve(src, omp::Options{budgets[g], lam, positive, tol, d});
  });
  return out;
}

}  // namespace datadiet
