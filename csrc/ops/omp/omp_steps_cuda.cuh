// The CUDA engine of datadiet::omp and datadiet::omp_factored: batched OMP as a pipeline
// of steps, every problem advancing one atom per step, with no host synchronisation inside
// a round. The algorithm and its admission and stopping rules are the CPU engine's
// (omp_engine_cpu.h, omp_rules.h); the Triton engine (kernels/omp.py) runs the same steps,
// kernel for kernel.
//
// One step launches, on the current stream:
//   pick_kernel       one block per problem: stop checks, argmax over the unpicked atoms
//                     (ties to the lower index) above the correlation floor, and for
//                     factorised atoms a Gram-column slot for the pick;
//   source kernels    factorised: the pick's Gram column (gram_kernel);
//   solve_kernel      one block per problem: append to the Cholesky factor (unless the pivot
//                     is too small), triangular solves, warm-started Lawson–Hanson NNLS
//                     (Givens downdates, re-admission by the largest positive gradient), the
//                     weights; the previous support and weights (and, before an NNLS, the
//                     factor) are kept to undo the pick; factorised: the residual from the
//                     stored Gram columns and the verdict;
//   source kernels    dense: residual r = b − Σ w_s a_s (float64) with the verdict, and
//                     c = A r; factorised: c = c0 − G[:, slots] w.
// A pick whose objective ‖r‖² + λ‖w‖² would rise is undone (restore) and clears PENDING, so the later
// kernels of the step skip its problem. Done problems (budget reached, ‖r‖ ≤ tol·‖b‖, no atom
// above the floor, λ = 0 and as many atoms as dimensions) skip every kernel and record why.
// The host runs rounds of steps and reads the status once per round: rejected atoms and
// atoms dropped by the NNLS do not count towards the budget, so one round of max(budget)
// steps may not finish every problem.
//
// Memory: per problem, vectors of its capacity cap = max(budget, 1) (support, weights, their
// copies before the pick, NNLS zero set, solve scratch) and two cap × cap float64 factors (the
// factor and its copy before an NNLS); block-level vector operations
// run as thread-strided loops over them, with __syncthreads() between dependent passes.
// All control flow in the per-problem kernels is uniform across the block: every thread
// computes the same scalars from the same (synchronised) memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/accelerator.h>

#include "common/cuda_stream.h"
#include "ops/omp/omp.h"
#include "ops/omp/omp_rules.h"

namespace datadiet {
namespace ompcuda {

using namespace omp;  // the rules: kPivotEps, kMinCorrelation, kReadmitEps, stop codes, nnls_guard

constexpr int kThreads = 128;  // per-problem blocks

// Per-problem layout table (int64 [P, kLayoutCols]).
enum Layout : int { LO, N, BUDGET, CAP, CAP_AT, L_AT, G_AT, kLayoutCols };
// Per-problem state (int64 [P, kStateCols]) and float64 state (double [P, kRealCols]).
// PENDING: this step's pick, -1 none (or rejected); M_OLD: the support size before it; SAVED:
// whether its NNLS saved the factor first; STOP: why the problem is done; REJECTED: picks not
// admitted.
enum StateCol : int { STATUS, M, ITS, PENDING, NEW_SLOT, USED, STOP, REJECTED, M_OLD, SAVED, kStateCols };
// OBJ: the objective ‖r‖² + λ‖w‖² of the current weights (rule 2 of omp_rules.h).
enum RealCol : int { R2, B2, FLOOR, STOP2, OBJ, kRealCols };

// Device pointers of one batched call.
struct Buffers {
  const int64_t* layout;
  int64_t* state;
  double* real;
  int64_t* support;  // [Σ cap] local atom indices, support order
  double* weights;   // [Σ cap]
  int64_t* sup_old;  // [Σ cap] the support before this step's pick
  double* w_old;     // [Σ cap] its weights
  int64_t* zero;     // [Σ cap] the NNLS zero set
  double* q;         // [Σ cap] a Gram column on the support
  double* y;         // [Σ cap] triangular-solve scratch (the unconstrained solution)
  double* x;         // [Σ cap] the column dropped by a factor downdate
  double* L;         // [Σ cap²]
  double* L_saved;   // [Σ cap²] the factor before this step's NNLS
  int64_t* owner;    // [Σ cap] factorised: the atom holding each Gram-column slot
  float* wslot;      // [Σ cap] factorised: weights by slot, 0 for slots off the support
  float* c;          // [N] correlations with the residual
  const float* c0;   // [N] correlations with the target
  int8_t* picked;    // [N]
  int8_t* in_support;  // [N]
  int64_t* slot_of;  // [N] factorised: Gram-column slot of each atom, -1 none
  float* G;          // [Σ n·cap] factorised: Gram columns, row-major per problem
  const int64_t* offsets;  // [P + 1]
  int64_t problems, rows;
  double lam;
  int64_t rank;  // λ = 0: the atoms' dimension (no support grows past it); else no limit
};

// The vectors and factor of one problem.
struct Problem {
  int64_t g, lo, n, budget, cap;
  int64_t *sup, *sup_old;
  double *w, *w_old, *q, *y, *x, *L, *L_saved;
  int64_t* zero;
  float* wslot;
  int64_t* owner;
  int64_t G_at;

  __device__ Problem(const Buffers& b, int64_t g_) : g(g_) {
    const int64_t* t = b.layout + g * kLayoutCols;
    lo = t[LO], n = t[N], budget = t[BUDGET], cap = t[CAP], G_at = t[G_AT];
    const int64_t at = t[CAP_AT];
    sup = b.support + at, w = b.weights + at, q = b.q + at, y = b.y + at, x = b.x + at;
    sup_old = b.sup_old + at, w_old = b.w_old + at;
    zero = b.zero + at, wslot = b.wslot + at, owner = b.owner + at;
    L = b.L + t[L_AT], L_saved = b.L_saved + t[L_AT];
  }
  __device__ double* row(int64_t i) const { return L + i * cap; }
};

// ---- block reductions (every thread gets the result) -----------------------------------

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline double block_sum(double v) {
  __shared__ double part[kThreads / 32];
  __shared__ double total;
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s += part[w];
    total = s;
  }
  __syncthreads();
  const double out = total;
  __syncthreads();
  return out;
}

// The largest (value, -index) pair: the best value, ties to the lowest index.
__device__ inline void block_argmax(double& v, int64_t& i) {
  __shared__ double vals[kThreads];
  __shared__ int64_t idx[kThreads];
  vals[threadIdx.x] = v, idx[threadIdx.x] = i;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      const double ov = vals[threadIdx.x + half];
      const int64_t oi = idx[threadIdx.x + half];
      const double mv = vals[threadIdx.x];
      const int64_t mi = idx[threadIdx.x];
      if (ov > mv || (ov == mv && oi >= 0 && (mi < 0 || oi < mi))) vals[threadIdx.x] = ov, idx[threadIdx.x] = oi;
    }
    __syncthreads();
  }
  v = vals[0], i = idx[0];
  __syncthreads();
}

__device__ inline double block_min(double v) {
  int64_t unused = -1;
  double neg = -v;
  block_argmax(neg, unused);
  return -neg;
}

// ---- Cholesky factor of G_SS + λI (cholesky.h, block-parallel) ---------------------------

// y ← L⁻¹ y in place: column by column, each solved entry taken out of the rest.
__device__ inline void forward(const Problem& p, int64_t m, double* y) {
  for (int64_t i = 0; i < m; ++i) {
    __syncthreads();
    const double yi = y[i] / p.row(i)[i];
    __syncthreads();
    for (int64_t t = i + 1 + threadIdx.x; t < m; t += kThreads) y[t] -= p.row(t)[i] * yi;
    if (threadIdx.x == 0) y[i] = yi;
  }
  __syncthreads();
}

// y ← L⁻ᵀ y in place: last row first, each solved entry taken out with an axpy of its row.
__device__ inline void backward(const Problem& p, int64_t m, double* y) {
  for (int64_t i = m - 1; i >= 0; --i) {
    __syncthreads();
    const double wi = y[i] / p.row(i)[i];
    __syncthreads();
    const double* li = p.row(i);
    for (int64_t t = threadIdx.x; t < i; t += kThreads) y[t] -= li[t] * wi;
    if (threadIdx.x == 0) y[i] = wi;
  }
  __syncthreads();
}

// p.y ← Q⁻¹ p over the support, p_s = ⟨a_{S_s}, b⟩ = c0[S_s].
__device__ inline void unconstrained(const Problem& p, const Buffers& b, int64_t m) {
  __syncthreads();
  for (int64_t s = threadIdx.x; s < m; s += kThreads) p.y[s] = b.c0[p.lo + p.sup[s]];
  forward(p, m, p.y);
  backward(p, m, p.y);
}

// Drops row and column r of the m × m factor: rows below move up one and lose column r; the
// trailing block absorbs the dropped column x by a rank-one update, one rotation per column.
__device__ inline void chol_remove(const Problem& p, int64_t m, int64_t r) {
  for (int64_t i = r + 1; i < m; ++i) {
    __syncthreads();
    const double* src = p.row(i);
    double* dst = p.row(i - 1);
    for (int64_t c = threadIdx.x; c < i; c += kThreads) dst[c] = c < r ? src[c] : src[c + 1];
    if (threadIdx.x == 0) p.x[i - 1] = src[r];
  }
  const int64_t size = m - 1;
  for (int64_t k = r; k < size; ++k) {
    __syncthreads();
    const double lkk = p.row(k)[k], xk = p.x[k];
    const double rr = hypot(lkk, xk), c = rr / lkk, s = xk / lkk;
    __syncthreads();
    for (int64_t i = k + 1 + threadIdx.x; i < size; i += kThreads) {
      double& lik = p.row(i)[k];
      lik = (lik + s * p.x[i]) / c;
      p.x[i] = c * p.x[i] - s * lik;
    }
    if (threadIdx.x == 0) p.row(k)[k] = rr;
  }
  __syncthreads();
}

// Removes entry r of a length-m vector (the tail moves down one), chunk by chunk: every read
// of a chunk happens before its writes, and writes only reach indices already read.
template <typename T>
__device__ inline void erase(T* v, int64_t r, int64_t m) {
  for (int64_t base = r; base + 1 < m; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    __syncthreads();
    const T next = t + 1 < m ? v[t + 1] : T{};
    __syncthreads();
    if (t + 1 < m) v[t] = next;
  }
  __syncthreads();
}

// Appends local atom j (weight 0) to the support and the factor; returns the new size, m
// again when j is numerically dependent on the support.
template <typename Source>
__device__ int64_t admit(const Problem& p, const Buffers& b, const Source& src, int64_t m, int64_t j) {
  const double diag = src.column(p, b, m, j) + b.lam;  // writes p.q[0..m)
  forward(p, m, p.q);
  double part = 0.0;
  for (int64_t s = threadIdx.x; s < m; s += kThreads) part += p.q[s] * p.q[s];
  const double d2 = diag - block_sum(part);
  if (!(d2 > kPivotEps * diag)) return m;
  double* row = p.row(m);
  for (int64_t s = threadIdx.x; s < m; s += kThreads) row[s] = p.q[s];
  if (threadIdx.x == 0) {
    row[m] = sqrt(d2);
    p.sup[m] = j;
    p.w[m] = 0.0;
    b.in_support[p.lo + j] = 1;
  }
  __syncthreads();
  return m + 1;
}

// Moves the zero-set atom with the largest gradient ⟨a_z, b⟩ − Σ_s w_s ⟨a_z, a_s⟩ above the
// threshold back into the support. Returns whether one was admitted.
template <typename Source>
__device__ bool readmit(const Problem& p, const Buffers& b, const Source& src, int64_t& m, int64_t& nzero,
                        double threshold) {
  while (nzero > 0) {
    double best = threshold;
    int64_t best_t = -1;
    for (int64_t t = 0; t < nzero; ++t) {
      const int64_t atom = p.zero[t];
      src.column(p, b, m, atom);
      double part = 0.0;
      for (int64_t s = threadIdx.x; s < m; s += kThreads) part += p.q[s] * p.w[s];
      const double grad = static_cast<double>(b.c0[p.lo + atom]) - block_sum(part);
      if (grad > best) best = grad, best_t = t;
    }
    if (best_t < 0) return false;
    const int64_t atom = p.zero[best_t];
    erase(p.zero, best_t, nzero);
    --nzero;
    const int64_t grown = admit(p, b, src, m, atom);
    if (grown > m) {
      m = grown;
      return true;
    }
  }
  return false;
}

// The step length at which coordinate s of x + α(z − x), x = p.w, z = p.y, reaches zero
// (2 when z_s > 0: it never does).
__device__ __forceinline__ double ratio(const Problem& p, int64_t s) {
  const double z = p.y[s], gap = p.w[s] - z;
  return z > 0.0 ? 2.0 : gap > 0.0 ? p.w[s] / gap : 0.0;
}

// Lawson–Hanson on the support from x = p.w (previous weights, the newest atom at 0) towards
// the unconstrained p.y; atoms left at zero are dropped. Leaves the weights in p.w.
template <typename Source>
__device__ int64_t nnls(const Problem& p, const Buffers& b, const Source& src, int64_t m, double threshold) {
  int64_t nzero = 0;
  const int64_t guard_max = nnls_guard(m);
  for (int64_t guard = 0; guard < guard_max; ++guard) {
    double low = DBL_MAX;
    for (int64_t s = threadIdx.x; s < m; s += kThreads) low = fmin(low, p.y[s]);
    if (block_min(low) > 0.0) {
      for (int64_t s = threadIdx.x; s < m; s += kThreads) p.w[s] = p.y[s];
      __syncthreads();
      if (!readmit(p, b, src, m, nzero, threshold)) break;
      unconstrained(p, b, m);
      continue;
    }
    // Step from x towards z until the first coordinate (the last of equals) reaches zero.
    double ratio_min = 2.0;
    for (int64_t s = threadIdx.x; s < m; s += kThreads) ratio_min = fmin(ratio_min, ratio(p, s));
    const double alpha = fmin(block_min(ratio_min), 1.0);
    double last = -1.0;
    int64_t unused = -1;
    for (int64_t s = threadIdx.x; s < m; s += kThreads)
      if (ratio(p, s) == alpha) last = fmax(last, static_cast<double>(s));
    block_argmax(last, unused);
    const int64_t first = static_cast<int64_t>(last);
    for (int64_t s = threadIdx.x; s < m; s += kThreads) p.w[s] = s == first ? 0.0 : p.w[s] + alpha * (p.y[s] - p.w[s]);
    __syncthreads();
    for (int64_t s = m - 1; s >= 0; --s) {
      if (p.w[s] > 0.0) continue;
      const int64_t atom = p.sup[s];
      __syncthreads();
      if (threadIdx.x == 0) {
        p.zero[nzero] = atom;
        b.in_support[p.lo + atom] = 0;
      }
      ++nzero;
      chol_remove(p, m, s);
      erase(p.sup, s, m);
      erase(p.w, s, m);
      --m;
    }
    unconstrained(p, b, m);
  }
  return m;
}

// The first m rows of an m × m lower-triangular factor, src to dst.
__device__ inline void copy_rows(const Problem& p, const double* src, double* dst, int64_t m) {
  __syncthreads();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = threadIdx.x; c <= i; c += kThreads) dst[i * p.cap + c] = src[i * p.cap + c];
  __syncthreads();
}

// λ·Σ w_s² over the m weights of the support: the objective's penalty (every thread gets it).
__device__ inline double penalty(const Problem& p, const Buffers& b, int64_t m) {
  double part = 0.0;
  for (int64_t s = threadIdx.x; s < m; s += kThreads) part += p.w[s] * p.w[s];
  return b.lam * block_sum(part);
}

// Keeps this step's solve: its residual and objective, support size, and whether the budget
// or the tolerance is reached.
__device__ inline void accept(const Problem& p, const Buffers& b, double r2, double objective, int64_t m) {
  if (threadIdx.x == 0) {
    int64_t* st = b.state + p.g * kStateCols;
    double* real = b.real + p.g * kRealCols;
    real[R2] = r2;
    real[OBJ] = objective;
    st[M] = m;
    if (m >= p.budget) st[STATUS] = 1, st[STOP] = kStopBudget;
    else if (r2 <= real[STOP2]) st[STATUS] = 1, st[STOP] = kStopTolerance;
  }
  __syncthreads();
}

// Undoes this step's pick j: the support, weights and factor (from the saved copy when the
// NNLS reshaped it; otherwise its first rows are untouched) as before the pick; a rejection.
__device__ inline void restore(const Problem& p, const Buffers& b, int64_t j) {
  int64_t* st = b.state + p.g * kStateCols;
  __syncthreads();
  const int64_t m0 = st[M_OLD];
  if (st[SAVED]) copy_rows(p, p.L_saved, p.L, m0);
  if (threadIdx.x == 0) b.in_support[p.lo + j] = 0;
  __syncthreads();
  for (int64_t s = threadIdx.x; s < m0; s += kThreads) {
    p.sup[s] = p.sup_old[s];
    p.w[s] = p.w_old[s];
    b.in_support[p.lo + p.sup_old[s]] = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    st[M] = m0;
    ++st[REJECTED];
    st[PENDING] = -1;
  }
  __syncthreads();
}

// ---- the per-problem kernels ------------------------------------------------------------

// Status, correlation floor and stopping residual from c0 and ‖b‖² (b2[g] when given, else
// real[B2] as the dense residual pass left it); c ← c0.
static __global__ void start_kernel(Buffers b, const float* b2, bool positive, double tol) {
  const int64_t g = blockIdx.x;
  const int64_t* t = b.layout + g * kLayoutCols;
  double best = 0.0;
  for (int64_t i = threadIdx.x; i < t[N]; i += kThreads) {
    const double c = b.c0[t[LO] + i];
    best = fmax(best, positive ? c : fabs(c));
    b.c[t[LO] + i] = b.c0[t[LO] + i];
  }
  int64_t unused = -1;
  block_argmax(best, unused);
  if (threadIdx.x == 0) {
    double* r = b.real + g * kRealCols;
    int64_t* st = b.state + g * kStateCols;
    if (b2 != nullptr) r[B2] = b2[g];
    r[R2] = r[OBJ] = r[B2];
    r[FLOOR] = kMinCorrelation * best;
    r[STOP2] = tol * tol * r[B2];
    st[STATUS] = t[BUDGET] > 0 && t[N] > 0 && r[B2] > 0.0 ? 0 : 1;
    st[STOP] = t[BUDGET] == 0 ? kStopBudget : kStopTolerance;
    st[PENDING] = -1;
    st[NEW_SLOT] = -1;
  }
}

// A Gram-column slot for atom j: the next unused one, else the lowest slot whose atom left
// the support (one exists: the support is below the budget <= cap). -1 if j kept its column.
__device__ inline int64_t assign_slot(const Problem& p, const Buffers& b, int64_t* st, int64_t j) {
  int64_t slot = b.slot_of[p.lo + j];
  if (slot >= 0) return -1;
  const int64_t used = st[USED];
  if (used < p.cap) {
    slot = used;
  } else {
    double free = -1.0;
    int64_t at = -1;
    for (int64_t s = threadIdx.x; s < p.cap; s += kThreads)
      if (!b.in_support[p.lo + p.owner[s]] && (at < 0 || s < at)) free = 0.0, at = s;
    block_argmax(free, at);
    slot = at;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (used < p.cap) st[USED] = used + 1;
    else b.slot_of[p.lo + p.owner[slot]] = -1;
    p.owner[slot] = j;
    b.slot_of[p.lo + j] = slot;
  }
  return slot;
}

// Stop checks, then the best unpicked atom above the floor (ties to the lower index).
template <bool Factored>
__global__ void pick_kernel(Buffers b, bool positive) {
  const int64_t g = blockIdx.x;
  int64_t* st = b.state + g * kStateCols;
  const double* r = b.real + g * kRealCols;
  int64_t j = -1, new_slot = -1, stop = -1;
  if (st[STATUS] == 0) {
    const Problem p(b, g);
    if (st[M] >= p.budget) stop = kStopBudget;
    else if (r[R2] <= r[STOP2]) stop = kStopTolerance;
    else if (st[M] >= b.rank) stop = kStopRank;
    if (stop < 0) {
      double best = -DBL_MAX;
      int64_t at = -1;
      for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
        if (b.picked[p.lo + i]) continue;
        const double c = b.c[p.lo + i], score = positive ? c : fabs(c);
        if (score > best) best = score, at = i;  // ascending i: the first of equals stays
      }
      block_argmax(best, at);
      if (at >= 0 && best > r[FLOOR]) j = at;
      else stop = kStopCorrelation;
      if (j >= 0 && Factored) new_slot = assign_slot(p, b, st, j);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (j < 0) {
        st[STATUS] = 1;
        st[STOP] = stop;
      } else {
        b.picked[p.lo + j] = 1;
        ++st[ITS];
      }
    }
  }
  if (threadIdx.x == 0) st[PENDING] = j, st[NEW_SLOT] = new_slot;
}

// Admits the pick (or rejects it as dependent) and solves for the weights (NNLS when asked
// and needed), keeping what a rejection restores; the source gives the verdict
// (src.solved: factorised here, dense in its residual kernel).
template <typename Source>
__global__ void solve_kernel(Buffers b, Source src, bool positive) {
  const int64_t g = blockIdx.x;
  int64_t* st = b.state + g * kStateCols;
  const int64_t j = st[PENDING];
  if (j < 0) return;
  const Problem p(b, g);
  const int64_t m0 = st[M];
  for (int64_t s = threadIdx.x; s < m0; s += kThreads) p.sup_old[s] = p.sup[s], p.w_old[s] = p.w[s];
  __syncthreads();
  int64_t m = admit(p, b, src, m0, j);
  if (m == m0) {
    if (threadIdx.x == 0) ++st[REJECTED], st[PENDING] = -1;
    return;
  }
  unconstrained(p, b, m);
  double low = DBL_MAX;
  for (int64_t s = threadIdx.x; s < m; s += kThreads) low = fmin(low, p.y[s]);
  const bool reshape = positive && block_min(low) <= 0.0;
  if (reshape) {
    copy_rows(p, p.L, p.L_saved, m0);
    m = nnls(p, b, src, m, kReadmitEps * sqrt(b.real[g * kRealCols + B2]));
  } else {
    for (int64_t s = threadIdx.x; s < m; s += kThreads) p.w[s] = p.y[s];
  }
  __syncthreads();
  if (threadIdx.x == 0) st[M_OLD] = m0, st[SAVED] = reshape ? 1 : 0;
  __syncthreads();
  src.solved(p, b, m, j);
}

// Outputs: global indices (-1 padded), weights (0 padded), ‖r‖, iterations, stop reasons and
// rejected picks.
static __global__ void finish_kernel(Buffers b, const int64_t* out_at, int64_t* indices, float* weights,
                                     float* residual, int64_t* iterations, int64_t* stop, int64_t* rejected) {
  const int64_t g = blockIdx.x;
  const Problem p(b, g);
  const int64_t m = b.state[g * kStateCols + M], at = out_at[g];
  for (int64_t s = threadIdx.x; s < p.budget; s += kThreads) {
    indices[at + s] = s < m ? p.lo + p.sup[s] : -1;
    weights[at + s] = s < m ? static_cast<float>(p.w[s]) : 0.0f;
  }
  if (threadIdx.x == 0) {
    residual[g] = static_cast<float>(sqrt(fmax(b.real[g * kRealCols + R2], 0.0)));
    iterations[g] = b.state[g * kStateCols + ITS];
    stop[g] = b.state[g * kStateCols + STOP];
    rejected[g] = b.state[g * kStateCols + REJECTED];
  }
}

// The problem holding row i: the last g with offsets[g] <= i.
__device__ __forceinline__ int64_t problem_of(const Buffers& b, int64_t i) {
  int64_t lo = 0, hi = b.problems;  // offsets[lo] <= i < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (b.offsets[mid] <= i) lo = mid;
    else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- the row-parallel kernels' loop: one warp per row ------------------------------------

constexpr int kRowThreads = 256;

inline unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((rows + 7) / 8, 65535)));
}

// Calls fn(i, g, lane) for every row i, g its problem, whose problem has a pick this step
// (every row when `all`); the warp's lanes share the row.
template <typename Fn>
__device__ void for_each_changed_row(const Buffers& b, bool all, const Fn& fn) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kRowThreads / 32);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * (kRowThreads / 32) + (threadIdx.x >> 5); i < b.rows;
       i += warps) {
    const int64_t g = problem_of(b, i);
    if (all || b.state[g * kStateCols + PENDING] >= 0) fn(i, g, lane);
  }
}

// ---- host side ---------------------------------------------------------------------------

// Device buffers of one call, carved out of four tensors.
class Workspace {
 public:
  Workspace(const StableTensor& like, const std::vector<int64_t>& offsets, const std::vector<int64_t>& budgets,
            bool factored, double lam, int64_t dimension, cudaStream_t stream)
      : problems_(static_cast<int64_t>(budgets.size())), budgets_(budgets) {
    const int64_t P = problems_, rows = offsets.back();
    std::vector<int64_t> host(P * kLayoutCols + P + 1 + P + 1);
    int64_t cap_total = 0, L_total = 0, G_total = 0, total = 0;
    for (int64_t g = 0; g < P; ++g) {
      const int64_t n = offsets[g + 1] - offsets[g], cap = std::max<int64_t>(budgets[g], 1);
      int64_t* t = host.data() + g * kLayoutCols;
      t[LO] = offsets[g], t[N] = n, t[BUDGET] = budgets[g], t[CAP] = cap;
      t[CAP_AT] = cap_total, t[L_AT] = L_total, t[G_AT] = G_total;
      cap_total += cap, L_total += cap * cap, G_total += factored ? n * cap : 0;
      host[P * kLayoutCols + g] = offsets[g];
      host[P * kLayoutCols + P + 1 + g] = total;
      total += budgets[g];
    }
    host[P * kLayoutCols + P] = rows;
    host[P * kLayoutCols + P + 1 + P] = total;
    max_rows_ = 0;
    for (int64_t g = 0; g < P; ++g) max_rows_ = std::max(max_rows_, offsets[g + 1] - offsets[g]);

    const int64_t ints = host.size() + P * kStateCols + 4 * cap_total + rows;
    ints_ = torch::stable::new_empty(like, {ints}, ScalarType::Long);
    reals_ = torch::stable::new_empty(like, {P * kRealCols + 5 * cap_total + 2 * L_total}, ScalarType::Double);
    floats_ = torch::stable::new_empty(like, {cap_total + 2 * rows + G_total + 1}, ScalarType::Float);
    bytes_ = torch::stable::new_empty(like, {2 * rows + 1}, ScalarType::Char);
    int64_t* i64 = ints_.mutable_data_ptr<int64_t>();
    cudaMemcpyAsync(i64, host.data(), host.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream);
    cudaMemsetAsync(i64 + host.size(), 0, (ints - host.size()) * sizeof(int64_t), stream);
    cudaMemsetAsync(reals_.mutable_data_ptr<double>(), 0, reals_.numel() * sizeof(double), stream);
    cudaMemsetAsync(floats_.mutable_data_ptr<float>(), 0, floats_.numel() * sizeof(float), stream);
    cudaMemsetAsync(bytes_.mutable_data_ptr<int8_t>(), 0, bytes_.numel(), stream);

    b.layout = i64;
    b.offsets = i64 + P * kLayoutCols;
    out_at_ = b.offsets + P + 1;
    b.state = i64 + host.size();
    b.support = b.state + P * kStateCols;
    b.zero = b.support + cap_total;
    b.owner = b.zero + cap_total;
    b.sup_old = b.owner + cap_total;
    b.slot_of = b.sup_old + cap_total;
    double* f64 = reals_.mutable_data_ptr<double>();
    b.real = f64;
    b.weights = f64 + P * kRealCols;
    b.q = b.weights + cap_total;
    b.y = b.q + cap_total;
    b.x = b.y + cap_total;
    b.w_old = b.x + cap_total;
    b.L = b.w_old + cap_total;
    b.L_saved = b.L + L_total;
    float* f32 = floats_.mutable_data_ptr<float>();
    b.wslot = f32;
    b.c = f32 + cap_total;
    c0_own = b.c + rows;
    b.c0 = c0_own;  // dense: the first correlation pass, copied there; factorised: the caller's
    b.G = c0_own + rows;
    b.picked = bytes_.mutable_data_ptr<int8_t>();
    b.in_support = b.picked + rows;
    b.problems = P, b.rows = rows, b.lam = lam;
    b.rank = lam == 0.0 ? dimension : INT64_MAX;
    if (factored) cudaMemsetAsync(b.slot_of, 0xff, rows * sizeof(int64_t), stream);  // -1
  }

  Buffers b;
  float* c0_own;

  // Rounds of steps until every problem is done; one device-to-host read per round.
  template <typename Step>
  void run(const char* op, cudaStream_t stream, const Step& step) {
    int64_t remaining = 0, steps = 0;
    for (const int64_t k : budgets_) remaining = std::max(remaining, k);
    std::vector<int64_t> state(problems_ * kStateCols);
    while (remaining > 0 && steps <= max_rows_) {
      for (int64_t s = 0; s < remaining; ++s) step();
      check_launch(op);
      steps += remaining;
      cudaMemcpyAsync(state.data(), b.state, state.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
      const cudaError_t err = cudaStreamSynchronize(stream);
      DD_CHECK(err == cudaSuccess, op, "CUDA error during the solve: ", cudaGetErrorString(err));
      remaining = 0;
      for (int64_t g = 0; g < problems_; ++g)
        if (state[g * kStateCols + STATUS] == 0)
          remaining = std::max(remaining, budgets_[g] - state[g * kStateCols + M]);
    }
  }

  void finish(OmpOutput& out, cudaStream_t stream) const {
    finish_kernel<<<static_cast<unsigned>(problems_), kThreads, 0, stream>>>(
        b, out_at_, std::get<0>(out).mutable_data_ptr<int64_t>(), std::get<1>(out).mutable_data_ptr<float>(),
        std::get<2>(out).mutable_data_ptr<float>(), std::get<3>(out).mutable_data_ptr<int64_t>(),
        std::get<4>(out).mutable_data_ptr<int64_t>(), std::get<5>(out).mutable_data_ptr<int64_t>());
  }

 private:
  int64_t problems_, max_rows_;
  std::vector<int64_t> budgets_;
  const int64_t* out_at_;
  StableTensor ints_, reals_, floats_, bytes_;
};

}  // namespace ompcuda
}  // namespace datadiet
