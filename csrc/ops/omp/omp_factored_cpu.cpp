// datadiet::omp_factored on CPU: OMP over last-layer gradients g_i = e_i ⊗ h̃_i given as
// factors E [N, C] (p − onehot) and H [N, D1] (the layer's inputs; with `bias`, h̃ = [h, 1]
// without the 1 ever being stored), never forming the N × C·D1 matrix. With
// ⟨g_i, g_j⟩ = (e_i·e_j)(h_i·h_j + bias) a new atom's Gram column costs O(n·(C + D1)); the
// correlations with the residual are c = c0 − G[:, S] w and the residual comes from the
// support's entries of the stored Gram columns (O(n·|S|) and O(|S|²)), so no iteration
// touches C·D1-sized data. c0 (the atoms' correlations with
// the target) and ‖b‖² come from the caller, who computes them with two matmuls per
// problem. The engine is omp_engine_cpu.h.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common/simd_cpu.h"
#include "ops/omp/omp.h"
#include "ops/omp/omp_engine_cpu.h"

namespace datadiet {
namespace {

using simd::dot;

struct FactoredAtoms {
  const float *e, *h, *c0;
  double b2;
  int64_t n, C, D1, capacity;
  float bias;  // 1 when the features carry an implicit trailing 1
  bool parallel;
  std::vector<float> G = std::vector<float>(static_cast<size_t>(n * capacity));  // [n, capacity]
  std::vector<int64_t> slot_of = std::vector<int64_t>(static_cast<size_t>(n), -1);
  std::vector<int64_t> slots = std::vector<int64_t>(static_cast<size_t>(capacity));  // of the support
  std::vector<float> wf = std::vector<float>(static_cast<size_t>(capacity));         // weights by slot
  int64_t used = 0;

  int64_t size() const { return n; }

  void target(float* out, double* out_b2) const {
    std::copy(c0, c0 + n, out);
    *out_b2 = b2;
  }

  double inner(int64_t i, int64_t j) const {
    return static_cast<double>(dot(e + i * C, e + j * C, C)) * (dot(h + i * D1, h + j * D1, D1) + bias);
  }

  // Stores atom j's Gram column (reusing the slot of an atom that left the support when
  // the columns run out) and returns its entries on the support.
  void column(int64_t j, const int64_t* support, int64_t m, double* q) {
    if (slot_of[j] < 0) {
      if (used == capacity) compact(support, m);
      const int64_t slot = used++;
      slot_of[j] = slot;
      const float *ej = e + j * C, *hj = h + j * D1;
      float* g = G.data();
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t i = 0; i < n; ++i)
        g[i * capacity + slot] = dot(e + i * C, ej, C) * (dot(h + i * D1, hj, D1) + bias);
    }
    for (int64_t s = 0; s < m; ++s) q[s] = G[support[s] * capacity + slot_of[j]];
  }

  void compact(const int64_t* support, int64_t m) {
    std::vector<int64_t> keep(support, support + m);
    std::sort(keep.begin(), keep.end(), [&](int64_t x, int64_t y) { return slot_of[x] < slot_of[y]; });
    for (int64_t a = 0; a < n; ++a)
      if (std::find(keep.begin(), keep.end(), a) == keep.end()) slot_of[a] = -1;
    int64_t to = 0;
    for (const int64_t atom : keep) {  // ascending source slots: moving down never overwrites a live one
      const int64_t from = slot_of[atom];
      if (from != to)
        for (int64_t i = 0; i < n; ++i) G[i * capacity + to] = G[i * capacity + from];
      slot_of[atom] = to++;
    }
    used = to;
  }

  // ‖b‖² − 2wᵀp + wᵀG_SS w from the stored Gram columns, in float64 and in support order
  // (where the columns sit depends on the budget; the verdict must not) — the residual of these
  // weights whether or not they solve the system exactly — and when the solve is kept
  // (omp::keeps) the correlations c = c0 − G[:, slots] w.
  double update(const int64_t* support, const double* w, int64_t m, const double* p, double penalty, double objective,
                float* c) {
    for (int64_t s = 0; s < m; ++s) slots[s] = slot_of[support[s]];
    double quad = 0.0, fit = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : quad) if (parallel && m * m > 65536)
    for (int64_t s = 0; s < m; ++s) {
      const float* gs = G.data() + support[s] * capacity;
      double gw = 0.0;
      for (int64_t t = 0; t < m; ++t) gw += gs[slots[t]] * w[t];
      quad += w[s] * gw;
    }
    for (int64_t s = 0; s < m; ++s) fit += w[s] * p[s];
    const double r2 = b2 - 2.0 * fit + quad;
    if (omp::keeps(r2, penalty, objective)) {
      std::fill(wf.begin(), wf.end(), 0.0f);
      for (int64_t s = 0; s < m; ++s) wf[slots[s]] = static_cast<float>(w[s]);
      const float *g = G.data(), *wp = wf.data();
#pragma omp parallel for schedule(static) if (parallel)
      for (int64_t i = 0; i < n; ++i) c[i] = c0[i] - dot(g + i * capacity, wp, used);
    }
    return r2;
  }
};

}  // namespace

OmpOutput omp_factored_cpu(const StableTensor& errors, const StableTensor& features, bool bias,
                           const StableTensor& c0, const StableTensor& b2, std::vector<int64_t> offsets,
                           std::vector<int64_t> budgets,
                           double lam, bool positive, double tol) {
  const int64_t total = check_omp_factored_args(errors, features, c0, b2, offsets, budgets, lam, tol);
  const int64_t problems = static_cast<int64_t>(budgets.size());
  OmpOutput out = allocate_omp(errors, total, problems);
  const bool one = problems == 1;
  const float *e = errors.const_data_ptr<float>(), *h = features.const_data_ptr<float>();
  const float *c = c0.const_data_ptr<float>(), *bb = b2.const_data_ptr<float>();
  const int64_t C = errors.size(1), D1 = features.size(1);
  solve_problems(out, offsets, budgets, [&](int64_t g) {
    const int64_t lo = offsets[g];
    FactoredAtoms src{e + lo * C, h + lo * D1, c + lo, static_cast<double>(bb[g]), offsets[g + 1] - lo,
                      C, D1, std::max<int64_t>(budgets[g], 1), bias ? 1.0f : 0.0f, one};
    return omp::solve(src, omp::Options{budgets[g], lam, positive, tol, C * (D1 + (bias ? 1 : 0))});
  });
  return out;
}

}  // namespace datadiet
