"""Triton engine of ``datadiet::omp`` and ``datadiet::omp_factored``: batched OMP as a pipeline of
steps, every problem advancing one atom per step, with no host synchronisation inside a round.

The algorithm is the CPU engine's (``csrc/ops/omp/omp_engine_cpu.h``) with its rules
(``csrc/ops/omp/omp_rules.h``): pick the best unpicked atom, append it to a Cholesky factor of
G_SS + λI unless its pivot is too small, solve, run warm-started Lawson–Hanson NNLS when a weight
goes negative, take the new residual and undo the pick if the objective ‖r‖² + λ‖w‖² rose, refresh
the correlations. One step launches

  pick        one program per problem: stop checks, device-side argmax over the unpicked atoms
              (ties to the lower index), factorised atoms: a Gram-column slot for the pick;
  gram        factorised only, one program per row block: G[i, slot] = (e_i·e_j)(h̃_i·h̃_j);
  solve       one program per problem: append, triangular solves, NNLS (factor downdates by
              Givens rotations, re-admission by the largest positive gradient), weights; the
              previous support and weights (and, before an NNLS, the factor) are kept to undo
              the pick; factorised: the residual from the stored Gram columns and the verdict;
  residual    dense only, one program per problem: r = b − Σ w_s a_s in float64, ‖r‖², the
              verdict (an objective ‖r‖² + λ‖w‖² that rose undoes the pick);
  correlate   one program per row block: dense c = A r, factorised c = c0 − G[:, slots] w.

Problems that are done (budget reached, ‖r‖ ≤ tol·‖b‖, no atom with a correlation above the
floor, λ = 0 and as many atoms as dimensions) skip every kernel and record why. A rejected pick
clears its problem's PENDING, so the later kernels of the step skip it too. The host launches
rounds of steps and reads one small status tensor per round to decide whether another round is
needed (rejected atoms and atoms dropped by the NNLS do not count towards the budget, so a round
of max(budget) steps may not finish).

Per-problem vectors (support, weights, the NNLS zero set, slot weights) live in global memory at
``cap_at`` with capacity ``cap = max(budget, 1)``; the factor L is ``cap × cap`` float64 at ``L_at``.
The solve program holds vectors of length ``BLOCK_K`` (the next power of two of the largest
budget) in registers, so budgets are limited to ``MAX_BUDGET``; the CUDA backend takes up to
``datadiet.ops.omp.CUDA_MAX_BUDGET``. A program's stores to global memory are read back by other threads of the same program
(row shifts, erasures), hence the ``debug_barrier`` after each of them.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import launch, upload, variant

MAX_BUDGET = 2048  # above it the solve kernel spills more than datadiet.ptxas.SPILL_BUDGET
MIN_CORRELATION = 1e-6  # relative to the largest initial correlation
NO_RANK_LIMIT = 1 << 62  # λ > 0: no support size makes every further atom dependent

# What the kernels read is a tl.constexpr object (a compiled kernel cannot read a plain global);
# the host reads the same numbers through HOST below.
PIVOT_EPS = tl.constexpr(1e-6)  # Schur complement at most this fraction of Q_jj: the atom is dependent
READMIT_EPS = tl.constexpr(1e-12)  # relative to ‖b‖: the smallest gradient that re-admits an atom

# Columns of the per-problem tables: layout (int64 [P, NT]), state (int64 [P, NS]) and
# float64 state (dstate [P, ND]: residual², ‖b‖², correlation floor, stopping residual², λ, and
# the objective ‖r‖² + λ‖w‖² of the current weights).
LO = tl.constexpr(0)
N = tl.constexpr(1)
BUDGET = tl.constexpr(2)
CAP = tl.constexpr(3)
CAP_AT = tl.constexpr(4)
L_AT = tl.constexpr(5)
G_AT = tl.constexpr(6)
NT = tl.constexpr(7)
STATUS = tl.constexpr(0)  # 0 active, 1 done
M = tl.constexpr(1)  # support size
ITS = tl.constexpr(2)
PENDING = tl.constexpr(3)  # this step's pick (local index), -1 none (or rejected)
NEW_SLOT = tl.constexpr(4)  # its new Gram-column slot (factorised), -1 none
USED = tl.constexpr(5)  # Gram-column slots handed out
STOP = tl.constexpr(6)  # why the problem is done (omp_rules.h)
REJECTED = tl.constexpr(7)  # picks not admitted
M_OLD = tl.constexpr(8)  # the support size before this step's pick
SAVED = tl.constexpr(9)  # 1 when this step's NNLS saved the factor first
NS = tl.constexpr(10)
STOP_BUDGET = tl.constexpr(0)
STOP_TOLERANCE = tl.constexpr(1)
STOP_CORRELATION = tl.constexpr(2)
STOP_RANK = tl.constexpr(3)
R2 = tl.constexpr(0)
B2 = tl.constexpr(1)
FLOOR = tl.constexpr(2)
STOP2 = tl.constexpr(3)
LAM = tl.constexpr(4)
OBJ = tl.constexpr(5)
ND = tl.constexpr(6)
HOST = SimpleNamespace(**{name: c.value for name, c in list(globals().items()) if isinstance(c, tl.constexpr)})

_ROWS = 32
_BLOCK_D = 64
_BLOCK_N = 1024


@triton.jit
def _scalar(v, offs, i):
    """v[i] of a register vector."""
    return tl.sum(tl.where(offs == i, v, 0.0), axis=0)


@triton.jit
def _dot_rows(A, i, j, d, BLOCK_D: tl.constexpr):
    """⟨A[i], A[j]⟩ in float32 over rows of length d."""
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        live = d0 + cols < d
        x = tl.load(A + i * d + d0 + cols, mask=live, other=0.0)
        y = tl.load(A + j * d + d0 + cols, mask=live, other=0.0)
        acc += x * y
    return tl.sum(acc, axis=0)


@triton.jit
def _column(A, G, sup, slot_of, lo, cap, G_at, d, m, j, offs, FACTORED: tl.constexpr, BLOCK_D: tl.constexpr):
    """q_s = ⟨a_{S_s}, a_j⟩ for s < m and ⟨a_j, a_j⟩ (float64), for local atom j."""
    if FACTORED:
        slot = tl.load(slot_of + lo + j)
        rows = tl.load(sup + offs, mask=offs < m, other=0)
        q = tl.load(G + G_at + rows * cap + slot, mask=offs < m, other=0.0).to(tl.float64)
        qjj = tl.load(G + G_at + j * cap + slot).to(tl.float64)
    else:
        q = tl.zeros(offs.shape, dtype=tl.float64)
        for s in range(0, m):
            atom = tl.load(sup + s)
            q = tl.where(offs == s, _dot_rows(A, lo + atom, lo + j, d, BLOCK_D).to(tl.float64), q)
        qjj = _dot_rows(A, lo + j, lo + j, d, BLOCK_D).to(tl.float64)
    return q, qjj


@triton.jit
def _forward(Lp, cap, m, v, offs):
    """y = L⁻¹ v, row by row."""
    y = tl.zeros(offs.shape, dtype=tl.float64)
    for i in range(0, m):
        row = tl.load(Lp + i * cap + offs, mask=offs < i, other=0.0)
        yi = (_scalar(v, offs, i) - tl.sum(row * y, axis=0)) / tl.load(Lp + i * cap + i)
        y = tl.where(offs == i, yi, y)
    return y


@triton.jit
def _backward(Lp, cap, m, y, offs):
    """w = L⁻ᵀ y, last row first; each solved w_i is taken out of the rest (an axpy with row i)."""
    acc = y
    w = tl.zeros(offs.shape, dtype=tl.float64)
    for t in range(0, m):
        i = m - 1 - t
        wi = _scalar(acc, offs, i) / tl.load(Lp + i * cap + i)
        w = tl.where(offs == i, wi, w)
        acc -= tl.load(Lp + i * cap + offs, mask=offs < i, other=0.0) * wi
    return w


@triton.jit
def _unconstrained(Lp, cap, m, c0, lo, sup, offs):
    """Q⁻¹ p over the support, p_s = ⟨a_{S_s}, b⟩ = c0[S_s]."""
    rows = tl.load(sup + offs, mask=offs < m, other=0)
    p = tl.load(c0 + lo + rows, mask=offs < m, other=0.0).to(tl.float64)
    return _backward(Lp, cap, m, _forward(Lp, cap, m, p, offs), offs)


@triton.jit
def _erase(ptr, s, m, offs):
    """Removes entry s of a length-m vector in global memory (the tail moves down one)."""
    tail = (offs >= s) & (offs + 1 < m)
    v = tl.load(ptr + offs + 1, mask=tail)
    tl.debug_barrier()
    tl.store(ptr + offs, v, mask=tail)
    tl.debug_barrier()


@triton.jit
def _chol_remove(Lp, cap, m, p, offs):
    """Drops row and column p of an m × m factor: rows below p move up one and lose column p;
    the trailing block absorbs the dropped column x by the rank-one update L33 L33ᵀ + x xᵀ,
    one Givens-like rotation per column (as cholesky.h)."""
    x = tl.zeros(offs.shape, dtype=tl.float64)
    for i in range(p + 1, m):
        row = tl.load(Lp + i * cap + offs, mask=offs <= i, other=0.0)
        shifted = tl.load(Lp + i * cap + offs + 1, mask=offs + 1 <= i, other=0.0)
        x = tl.where(offs == i - 1, _scalar(row, offs, p), x)
        tl.debug_barrier()
        tl.store(Lp + (i - 1) * cap + offs, tl.where(offs < p, row, shifted), mask=offs < i)
        tl.debug_barrier()
    size = m - 1
    for k in range(p, size):
        lkk = tl.load(Lp + k * cap + k)
        xk = _scalar(x, offs, k)
        r = tl.sqrt(lkk * lkk + xk * xk)
        c = r / lkk
        s = xk / lkk
        below = (offs > k) & (offs < size)
        col = (tl.load(Lp + offs * cap + k, mask=below, other=0.0) + s * x) / c
        x = tl.where(below, c * x - s * col, x)
        tl.debug_barrier()
        tl.store(Lp + offs * cap + k, tl.where(offs == k, r, col), mask=(offs >= k) & (offs < size))
        tl.debug_barrier()


@triton.jit
def _admit(A, G, Lp, sup, wp, slot_of, in_support, lo, cap, G_at, d, lam, m, j, offs,
           FACTORED: tl.constexpr, BLOCK_D: tl.constexpr):
    """Appends local atom j to the support (weight 0) and the factor; returns the new support size
    (m again when j is numerically dependent on the support)."""
    q, qjj = _column(A, G, sup, slot_of, lo, cap, G_at, d, m, j, offs, FACTORED, BLOCK_D)
    l = _forward(Lp, cap, m, q, offs)
    diag = qjj + lam
    d2 = diag - tl.sum(l * l, axis=0)
    out = m
    if d2 > diag * PIVOT_EPS:
        tl.store(Lp + m * cap + offs, tl.where(offs == m, tl.sqrt(tl.maximum(d2, 0.0)), l), mask=offs <= m)
        tl.store(sup + m, j)
        tl.store(wp + m, 0.0)
        tl.store(in_support + lo + j, 1)
        out = m + 1
    tl.debug_barrier()
    return out


@triton.jit
def _readmit(A, G, c0, Lp, sup, wp, zp, slot_of, in_support, lo, cap, G_at, d, lam, m, nzero, threshold, offs,
             FACTORED: tl.constexpr, BLOCK_D: tl.constexpr):
    """Moves the zero-set atom with the largest gradient ⟨a_z, b⟩ − ⟨a_z, Σ x_s a_s⟩ above
    ``threshold`` back into the support (x = weights in wp); returns (found, m, nzero)."""
    found = m * 0
    go = (nzero > 0).to(tl.int32)
    x = tl.load(wp + offs, mask=offs < m, other=0.0)
    while go != 0:
        grad = tl.full(offs.shape, float("-inf"), tl.float64)
        for t in range(0, nzero):
            atom = tl.load(zp + t)
            q, qjj = _column(A, G, sup, slot_of, lo, cap, G_at, d, m, atom, offs, FACTORED, BLOCK_D)
            g_t = tl.load(c0 + lo + atom).to(tl.float64) - tl.sum(q * x, axis=0)
            grad = tl.where(offs == t, g_t, grad)
        best = tl.max(grad, axis=0)
        go = go * 0
        if best > threshold:
            best_t = tl.min(tl.where(grad == best, offs, cap), axis=0)
            atom = tl.load(zp + best_t)
            _erase(zp, best_t, nzero, offs)
            nzero -= 1
            grown = _admit(A, G, Lp, sup, wp, slot_of, in_support, lo, cap, G_at, d, lam, m, atom, offs,
                           FACTORED, BLOCK_D)
            if grown > m:
                found = m * 0 + 1
                m = grown
            else:
                go = (nzero > 0).to(tl.int32)
    return found, m, nzero


@triton.jit
def _nnls(A, G, c0, Lp, sup, wp, zp, slot_of, in_support, lo, cap, G_at, d, lam, m, z, threshold, guard_max, offs,
          FACTORED: tl.constexpr, BLOCK_D: tl.constexpr):
    """Lawson–Hanson on the support from x = wp (previous weights, the new atom at 0) towards the
    unconstrained z; atoms left at zero are dropped. Leaves the weights in wp; returns m."""
    nzero = m * 0
    guard = m * 0
    go = m * 0 + 1
    while go != 0:
        if tl.min(tl.where(offs < m, z, 1.0), axis=0) > 0.0:
            tl.store(wp + offs, z, mask=offs < m)
            tl.debug_barrier()
            found, m, nzero = _readmit(A, G, c0, Lp, sup, wp, zp, slot_of, in_support, lo, cap, G_at, d, lam, m,
                                       nzero, threshold, offs, FACTORED, BLOCK_D)
            if found != 0:
                z = _unconstrained(Lp, cap, m, c0, lo, sup, offs)
            else:
                go = go * 0
        else:
            # Step from x towards z until the first coordinate (the last of equals) reaches zero.
            x = tl.load(wp + offs, mask=offs < m, other=0.0)
            blocked = (offs < m) & (z <= 0.0)
            gap = x - z
            ratio = tl.where(blocked, tl.where(gap > 0.0, x / tl.where(gap > 0.0, gap, 1.0), 0.0), 2.0)
            alpha = tl.minimum(tl.min(ratio, axis=0), 1.0)
            first = tl.max(tl.where(ratio == alpha, offs, -1), axis=0)
            x = tl.where(offs == first, 0.0, x + alpha * (z - x))
            tl.store(wp + offs, x, mask=offs < m)
            tl.debug_barrier()
            top = m
            for t in range(0, top):
                s = top - 1 - t
                if tl.load(wp + s) <= 0.0:
                    atom = tl.load(sup + s)
                    tl.store(zp + nzero, atom)
                    tl.store(in_support + lo + atom, 0)
                    nzero += 1
                    _chol_remove(Lp, cap, m, s, offs)
                    _erase(sup, s, m, offs)
                    _erase(wp, s, m, offs)
                    m -= 1
            z = _unconstrained(Lp, cap, m, c0, lo, sup, offs)
        guard += 1
        if guard >= guard_max:
            go = go * 0
    return m


@triton.jit
def _copy_rows(src, dst, cap, m, offs):
    """The first m rows of an m × m lower-triangular factor, src to dst."""
    for i in range(0, m):
        tl.store(dst + i * cap + offs, tl.load(src + i * cap + offs, mask=offs <= i, other=0.0), mask=offs <= i)
    tl.debug_barrier()


@triton.jit
def _restore(state, g, Lp, Lsaved, sup, wp, sup_old, w_old, in_support, lo, cap, j, offs):
    """Undoes this step's pick j: the support, weights and factor (from the saved copy when the
    NNLS reshaped it; otherwise its first rows are untouched) as before the pick; a rejection."""
    m0 = tl.load(state + g * NS + M_OLD)
    if tl.load(state + g * NS + SAVED) != 0:
        _copy_rows(Lsaved, Lp, cap, m0, offs)
    tl.store(in_support + lo + j, 0)
    tl.debug_barrier()
    atoms = tl.load(sup_old + offs, mask=offs < m0, other=0)
    tl.store(sup + offs, atoms, mask=offs < m0)
    tl.store(wp + offs, tl.load(w_old + offs, mask=offs < m0, other=0.0), mask=offs < m0)
    tl.store(in_support + lo + atoms, tl.full(offs.shape, 1, tl.int8), mask=offs < m0)
    tl.store(state + g * NS + M, m0)
    tl.store(state + g * NS + REJECTED, tl.load(state + g * NS + REJECTED) + 1)
    tl.store(state + g * NS + PENDING, -1)
    tl.debug_barrier()


@triton.jit
def _keeps(r2, penalty, objective):
    """Rule 2 (omp_rules.h keeps()): the solve stays unless the objective ‖r‖² + λ‖w‖² rose."""
    return r2 + penalty <= objective


@triton.jit
def _accept(state, dstate, g, r2, objective, m, budget):
    """Keeps this step's solve: its residual and objective, support size, and whether the budget
    or the tolerance is reached."""
    tl.store(dstate + g * ND + R2, r2)
    tl.store(dstate + g * ND + OBJ, objective)
    tl.store(state + g * NS + M, m)
    if m >= budget:
        tl.store(state + g * NS + STATUS, 1)
        tl.store(state + g * NS + STOP, STOP_BUDGET)
    elif r2 <= tl.load(dstate + g * ND + STOP2):
        tl.store(state + g * NS + STATUS, 1)
        tl.store(state + g * NS + STOP, STOP_TOLERANCE)


@triton.jit
def _solve_kernel(A, G, c0, table, state, dstate, support, weights, zero, wslot, slot_of, in_support, L, Lsaved,
                  sup_old, w_old, d, POSITIVE: tl.constexpr, FACTORED: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    j = tl.load(state + g * NS + PENDING)
    if j >= 0:
        lo = tl.load(table + g * NT + LO)
        budget = tl.load(table + g * NT + BUDGET)
        cap = tl.load(table + g * NT + CAP)
        cap_at = tl.load(table + g * NT + CAP_AT)
        Lp = L + tl.load(table + g * NT + L_AT)
        Ls = Lsaved + tl.load(table + g * NT + L_AT)
        G_at = tl.load(table + g * NT + G_AT)
        sup = support + cap_at
        wp = weights + cap_at
        offs = tl.arange(0, BLOCK_K)
        m0 = tl.load(state + g * NS + M)
        b2 = tl.load(dstate + g * ND + B2)
        lam = tl.load(dstate + g * ND + LAM)  # float64, as the CPU engine adds it
        current = tl.load(dstate + g * ND + OBJ)  # read before _accept stores the new one
        tl.store(sup_old + cap_at + offs, tl.load(sup + offs, mask=offs < m0, other=0), mask=offs < m0)
        tl.store(w_old + cap_at + offs, tl.load(wp + offs, mask=offs < m0, other=0.0), mask=offs < m0)
        tl.store(state + g * NS + M_OLD, m0)
        tl.store(state + g * NS + SAVED, 0)
        tl.debug_barrier()
        m = _admit(A, G, Lp, sup, wp, slot_of, in_support, lo, cap, G_at, d, lam, m0, j, offs, FACTORED, BLOCK_D)
        if m > m0:
            z = _unconstrained(Lp, cap, m, c0, lo, sup, offs)
            negative = tl.min(tl.where(offs < m, z, 1.0), axis=0) <= 0.0
            if POSITIVE:
                if negative:
                    _copy_rows(Lp, Ls, cap, m0, offs)
                    tl.store(state + g * NS + SAVED, 1)
                    m = _nnls(A, G, c0, Lp, sup, wp, zero + cap_at, slot_of, in_support, lo, cap, G_at, d, lam, m,
                              z, tl.sqrt(b2) * READMIT_EPS, 6 * m + 10, offs, FACTORED, BLOCK_D)  # nnls_guard(m)
                else:
                    tl.store(wp + offs, z, mask=offs < m)
            else:
                tl.store(wp + offs, z, mask=offs < m)
            tl.debug_barrier()
            if FACTORED:
                # No C × D residual is formed: ‖r‖² = ‖b‖² − 2wᵀp + wᵀG_SS w from the stored columns,
                # summed in support order.
                w = tl.load(wp + offs, mask=offs < m, other=0.0)
                rows = tl.load(sup + offs, mask=offs < m, other=0)
                slots = tl.load(slot_of + lo + rows, mask=offs < m, other=0)
                p = tl.load(c0 + lo + rows, mask=offs < m, other=0.0).to(tl.float64)
                quad = tl.sum(w * 0.0, axis=0)
                for s in range(0, m):
                    gs = tl.load(G + G_at + tl.load(sup + s) * cap + slots, mask=offs < m, other=0.0)
                    quad += _scalar(w, offs, s) * tl.sum(gs.to(tl.float64) * w, axis=0)
                r2 = b2 - 2.0 * tl.sum(w * p, axis=0) + quad
                penalty = lam * tl.sum(w * w, axis=0)
                if _keeps(r2, penalty, current):
                    tl.store(wslot + cap_at + offs, tl.zeros(offs.shape, dtype=tl.float32), mask=offs < cap)
                    tl.debug_barrier()
                    tl.store(wslot + cap_at + slots, w.to(tl.float32), mask=offs < m)
                    _accept(state, dstate, g, r2, r2 + penalty, m, budget)
                else:
                    _restore(state, g, Lp, Ls, sup, wp, sup_old + cap_at, w_old + cap_at, in_support, lo, cap, j,
                             offs)
            else:
                tl.store(state + g * NS + M, m)  # the residual kernel gives the verdict
        else:
            tl.store(state + g * NS + REJECTED, tl.load(state + g * NS + REJECTED) + 1)
            tl.store(state + g * NS + PENDING, -1)


@triton.jit
def _pick_kernel(c, picked, table, state, dstate, slot_of, owner, in_support, rank, POSITIVE: tl.constexpr,
                 FACTORED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)
    status = tl.load(state + g * NS + STATUS)
    j = status * 0 - 1
    new_slot = status * 0 - 1
    if status == 0:
        lo = tl.load(table + g * NT + LO)
        n = tl.load(table + g * NT + N)
        budget = tl.load(table + g * NT + BUDGET)
        m = tl.load(state + g * NS + M)
        stop = status * 0 - 1
        if m >= budget:
            stop = stop * 0 + STOP_BUDGET
        elif tl.load(dstate + g * ND + R2) <= tl.load(dstate + g * ND + STOP2):
            stop = stop * 0 + STOP_TOLERANCE
        elif m >= rank:
            stop = stop * 0 + STOP_RANK
        else:
            best = tl.load(dstate + g * ND + FLOOR)
            idx0 = tl.arange(0, BLOCK_N)
            for off in range(0, n, BLOCK_N):
                idx = off + idx0
                live = idx < n
                cv = tl.load(c + lo + idx, mask=live, other=0.0).to(tl.float64)
                free = tl.load(picked + lo + idx, mask=live, other=1) == 0
                score = cv if POSITIVE else tl.abs(cv)
                score = tl.where(live & free, score, float("-inf"))
                top = tl.max(score, axis=0)
                if top > best:
                    best = top
                    j = tl.min(tl.where(score == top, idx, n), axis=0)
            if j < 0:
                stop = stop * 0 + STOP_CORRELATION
            else:
                tl.store(picked + lo + j, 1)
                tl.store(state + g * NS + ITS, tl.load(state + g * NS + ITS) + 1)
                if FACTORED:
                    new_slot = _assign_slot(table, state, slot_of, owner, in_support, g, lo, j, BLOCK_K)
        if stop >= 0:
            tl.store(state + g * NS + STATUS, 1)
            tl.store(state + g * NS + STOP, stop)
    tl.store(state + g * NS + PENDING, j)
    tl.store(state + g * NS + NEW_SLOT, new_slot)


@triton.jit
def _assign_slot(table, state, slot_of, owner, in_support, g, lo, j, BLOCK_K: tl.constexpr):
    """A Gram-column slot for atom j: the next unused one, else the lowest slot whose atom left the
    support (there is one: the support is below the budget ≤ cap). -1 if j kept its column."""
    cap = tl.load(table + g * NT + CAP)
    cap_at = tl.load(table + g * NT + CAP_AT)
    slot = tl.load(slot_of + lo + j)
    out = slot * 0 - 1
    if slot < 0:
        used = tl.load(state + g * NS + USED)
        if used < cap:
            slot = used
            tl.store(state + g * NS + USED, used + 1)
        else:
            offs = tl.arange(0, BLOCK_K)
            holders = tl.load(owner + cap_at + offs, mask=offs < cap, other=0)
            held = tl.load(in_support + lo + holders, mask=offs < cap, other=1)
            slot = tl.min(tl.where(held == 0, offs, cap), axis=0).to(slot.dtype)
            tl.store(slot_of + lo + tl.load(owner + cap_at + slot), -1)
        tl.store(owner + cap_at + slot, j)
        tl.store(slot_of + lo + j, slot)
        out = slot
    return out


@triton.jit
def _gram_kernel(E, H, G, row_problem, table, state, N, C, D1, bias, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """G[i, slot] = (e_i·e_j)(h_i·h_j + bias) for the rows of problems whose pick needs a new column
    (bias = 1: the features' implicit trailing 1)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    g = tl.load(row_problem + rows, mask=rows < N, other=0)
    slot = tl.load(state + g * NS + NEW_SLOT, mask=rows < N, other=-1)
    act = (rows < N) & (slot >= 0)
    if tl.max(act.to(tl.int32), axis=0) > 0:
        lo = tl.load(table + g * NT + LO, mask=act, other=0)
        jr = lo + tl.load(state + g * NS + PENDING, mask=act, other=0)
        cols = tl.arange(0, BLOCK_D)
        ee = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_D):
            live = act[:, None] & (c0 + cols < C)[None, :]
            x = tl.load(E + rows[:, None] * C + c0 + cols[None, :], mask=live, other=0.0)
            y = tl.load(E + jr[:, None] * C + c0 + cols[None, :], mask=live, other=0.0)
            ee += x * y
        hh = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        for h0 in range(0, D1, BLOCK_D):
            live = act[:, None] & (h0 + cols < D1)[None, :]
            x = tl.load(H + rows[:, None] * D1 + h0 + cols[None, :], mask=live, other=0.0)
            y = tl.load(H + jr[:, None] * D1 + h0 + cols[None, :], mask=live, other=0.0)
            hh += x * y
        cap = tl.load(table + g * NT + CAP, mask=act, other=0)
        at = tl.load(table + g * NT + G_AT, mask=act, other=0) + (rows - lo) * cap + slot
        tl.store(G + at, tl.sum(ee, axis=1) * (tl.sum(hh, axis=1) + bias), mask=act)


@triton.jit
def _residual_kernel(A, b, r, table, state, dstate, support, weights, L, Lsaved, sup_old, w_old, in_support, d,
                     REFRESH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Dense: r = b − Σ w_s a_s accumulated in float64, stored float32, and ‖r‖² (the exact residual).
    After a solve (not REFRESH) it is the verdict: an objective ‖r‖² + λ‖w‖² above the current one
    undoes the pick."""
    g = tl.program_id(0).to(tl.int64)
    j = tl.load(state + g * NS + PENDING)
    if REFRESH or (j >= 0):
        lo = tl.load(table + g * NT + LO)
        cap_at = tl.load(table + g * NT + CAP_AT)
        m = tl.load(state + g * NS + M)
        current = tl.load(dstate + g * ND + OBJ)  # read before _accept stores the new one
        cols = tl.arange(0, BLOCK_D)
        r2 = tl.zeros([BLOCK_D], dtype=tl.float64)
        for d0 in range(0, d, BLOCK_D):
            live = d0 + cols < d
            acc = tl.load(b + g * d + d0 + cols, mask=live, other=0.0).to(tl.float64)
            for s in range(0, m):
                row = lo + tl.load(support + cap_at + s)
                acc -= tl.load(weights + cap_at + s) * tl.load(A + row * d + d0 + cols, mask=live, other=0.0)
            tl.store(r + g * d + d0 + cols, acc.to(tl.float32), mask=live)
            r2 += acc * acc
        total = tl.sum(r2, axis=0)
        offs = tl.arange(0, BLOCK_K)
        w = tl.load(weights + cap_at + offs, mask=offs < m, other=0.0)
        penalty = tl.load(dstate + g * ND + LAM) * tl.sum(w * w, axis=0)
        if REFRESH:
            tl.store(dstate + g * ND + R2, total)
        elif _keeps(total, penalty, current):
            _accept(state, dstate, g, total, total + penalty, m, tl.load(table + g * NT + BUDGET))
        else:
            L_at = tl.load(table + g * NT + L_AT)
            _restore(state, g, L + L_at, Lsaved + L_at, support + cap_at, weights + cap_at, sup_old + cap_at,
                     w_old + cap_at, in_support, lo, tl.load(table + g * NT + CAP), j, offs)


@triton.jit
def _correlate_kernel(A, r, G, c0, wslot, c, row_problem, table, state, N, d, kmax, REFRESH: tl.constexpr,
                      FACTORED: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Correlations with the residual for the rows of problems that changed this step."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    g = tl.load(row_problem + rows, mask=rows < N, other=0)
    if REFRESH:
        act = rows < N
    else:
        act = (rows < N) & (tl.load(state + g * NS + PENDING, mask=rows < N, other=-1) >= 0)
    if tl.max(act.to(tl.int32), axis=0) > 0:
        cols = tl.arange(0, BLOCK_D)
        acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
        if FACTORED:
            lo = tl.load(table + g * NT + LO, mask=act, other=0)
            cap = tl.load(table + g * NT + CAP, mask=act, other=0)
            base = tl.load(table + g * NT + G_AT, mask=act, other=0) + (rows - lo) * cap
            cap_at = tl.load(table + g * NT + CAP_AT, mask=act, other=0)
            for s0 in range(0, kmax, BLOCK_D):
                live = act[:, None] & ((s0 + cols)[None, :] < cap[:, None])
                gv = tl.load(G + base[:, None] + s0 + cols[None, :], mask=live, other=0.0)
                wv = tl.load(wslot + cap_at[:, None] + s0 + cols[None, :], mask=live, other=0.0)
                acc += gv * wv
            out = tl.load(c0 + rows, mask=act, other=0.0) - tl.sum(acc, axis=1)
        else:
            for d0 in range(0, d, BLOCK_D):
                live = act[:, None] & (d0 + cols < d)[None, :]
                x = tl.load(A + rows[:, None] * d + d0 + cols[None, :], mask=live, other=0.0)
                y = tl.load(r + g[:, None] * d + d0 + cols[None, :], mask=live, other=0.0)
                acc += x * y
            out = tl.sum(acc, axis=1)
        tl.store(c + rows, out, mask=act)


class _Problems:
    """Layout table, state and buffers of one batched call."""

    def __init__(self, offsets: list[int], budgets: list[int], device: torch.device, factored: bool):
        P = len(budgets)
        sizes = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
        caps = [max(k, 1) for k in budgets]
        cap_at, L_at, G_at = [0], [0], [0]
        for n, cap in zip(sizes, caps):
            cap_at.append(cap_at[-1] + cap)
            L_at.append(L_at[-1] + cap * cap)
            G_at.append(G_at[-1] + (n * cap if factored else 0))
        rows = [offsets[:-1], sizes, budgets, caps, cap_at[:-1], L_at[:-1], G_at[:-1]]
        self.table = upload(list(zip(*rows)), device).reshape(P, HOST.NT)
        self.P, self.N, self.sizes, self.budgets, self.offsets = P, offsets[-1], sizes, budgets, offsets
        self.kmax = max(caps, default=1)
        self.block_k = triton.next_power_of_2(self.kmax)
        i64 = dict(dtype=torch.int64, device=device)
        self.state = torch.zeros(P, HOST.NS, **i64)
        self.dstate = torch.zeros(P, HOST.ND, dtype=torch.float64, device=device)
        self.support = torch.zeros(cap_at[-1], **i64)
        self.weights = torch.zeros(cap_at[-1], dtype=torch.float64, device=device)
        self.zero = torch.zeros(cap_at[-1], **i64)
        self.wslot = torch.zeros(cap_at[-1], dtype=torch.float32, device=device)
        self.owner = torch.zeros(cap_at[-1], **i64)
        self.L = torch.zeros(L_at[-1], dtype=torch.float64, device=device)
        self.L_saved = torch.zeros(L_at[-1], dtype=torch.float64, device=device)
        self.support_old = torch.zeros(cap_at[-1], **i64)
        self.weights_old = torch.zeros(cap_at[-1], dtype=torch.float64, device=device)
        self.G = torch.zeros(G_at[-1], dtype=torch.float32, device=device)
        self.c = torch.zeros(self.N, dtype=torch.float32, device=device)
        self.picked = torch.zeros(self.N, dtype=torch.int8, device=device)
        self.in_support = torch.zeros(self.N, dtype=torch.int8, device=device)
        self.slot_of = torch.full((self.N,), -1, **i64)
        self.row_problem = torch.repeat_interleave(torch.arange(P, device=device), upload(sizes, device),
                                                   output_size=self.N)
        self.cap_at = upload(cap_at[:-1], device)

    def start(self, c0: torch.Tensor, b2: torch.Tensor, positive: bool, tol: float, lam: float) -> None:
        """Status, ‖b‖², the correlation floor, the stopping residual and λ, on the device."""
        score = c0.double() if positive else c0.double().abs()
        best0 = torch.zeros(self.P, dtype=torch.float64, device=c0.device)
        best0.scatter_reduce_(0, self.row_problem, score, "amax")
        dev = c0.device
        budgets = upload(self.budgets, dev)
        live = (budgets > 0) & (upload(self.sizes, dev) > 0) & (b2 > 0)
        self.state[:, HOST.STATUS] = (~live).long()
        self.state[:, HOST.STOP] = torch.where(budgets == 0, HOST.STOP_BUDGET, HOST.STOP_TOLERANCE)
        self.state[:, HOST.PENDING] = -1
        self.dstate[:, HOST.R2] = b2
        self.dstate[:, HOST.B2] = b2
        self.dstate[:, HOST.OBJ] = b2
        self.dstate[:, HOST.FLOOR] = MIN_CORRELATION * best0
        self.dstate[:, HOST.STOP2] = tol * tol * b2
        self.dstate[:, HOST.LAM] = lam
        self.c.copy_(c0)

    def finish(self):
        """indices (global rows, -1 padded), weights (0 padded), residual, iterations, stop, rejected."""
        dev = self.c.device
        budgets = upload(self.budgets, dev)
        total = int(sum(self.budgets))
        problem = torch.repeat_interleave(torch.arange(self.P, device=dev), budgets, output_size=total)
        out_at = torch.cumsum(budgets, 0) - budgets
        s = torch.arange(total, device=dev) - out_at[problem]
        found = s < self.state[problem, HOST.M]
        at = self.cap_at[problem] + s
        indices = torch.where(found, self.table[problem, HOST.LO] + self.support[at], -1)
        weights = torch.where(found, self.weights[at], 0.0).float()
        residual = self.dstate[:, HOST.R2].clamp_min(0).sqrt().float()
        return (indices, weights, residual, self.state[:, HOST.ITS].clone(), self.state[:, HOST.STOP].clone(),
                self.state[:, HOST.REJECTED].clone())


def _run(pb: _Problems, steps) -> None:
    """Rounds of steps until every problem is done; one host read of the status per round."""
    remaining = max(pb.budgets, default=0)
    total = 0
    while remaining > 0 and total <= max(pb.sizes, default=0):
        for _ in range(remaining):
            steps()
        total += remaining
        status = pb.state[:, [HOST.STATUS, HOST.M]].cpu()
        active = [g for g in range(pb.P) if status[g, 0] == 0]
        remaining = max((pb.budgets[g] - int(status[g, 1]) for g in active), default=0)


def _check_budget(budgets: list[int]) -> None:
    if max(budgets, default=0) > MAX_BUDGET:
        raise ValueError(f"datadiet.omp: the Triton backend holds a problem's support in registers and takes budgets "
                         f"up to {MAX_BUDGET}, got {max(budgets)}; use backend='cuda' (up to 8192) or 'cpu'")


def _solve_warps(block_k: int) -> int:
    """Warps of the solve kernel: enough that its BLOCK_K-long float64 vectors fit in registers
    (4 up to BLOCK_K = 512, 16 at 2048)."""
    return max(4, block_k // 128)


def omp(atoms, targets, offsets: list[int], budgets: list[int], lam: float, positive: bool, tol: float):
    _check_budget(budgets)
    pb = _Problems(offsets, budgets, atoms.device, factored=False)
    N, d = atoms.shape
    P = pb.P
    if P == 0:
        return pb.finish()
    r = torch.empty(P, d, dtype=torch.float32, device=atoms.device)
    rows_grid = (triton.cdiv(max(N, 1), _ROWS),)

    def residual(refresh):
        launch(_residual_kernel, (P,), atoms, targets, r, pb.table, pb.state, pb.dstate, pb.support, pb.weights, pb.L,
               pb.L_saved, pb.support_old, pb.weights_old, pb.in_support, d, REFRESH=refresh, BLOCK_K=pb.block_k,
               BLOCK_D=_BLOCK_D)

    def correlate(refresh):
        launch(_correlate_kernel, rows_grid, atoms, r, pb.G, pb.c, pb.wslot, pb.c, pb.row_problem, pb.table, pb.state,
               N, d, pb.kmax, REFRESH=refresh, FACTORED=False, ROWS=_ROWS, BLOCK_D=_BLOCK_D)

    residual(True)
    correlate(True)
    c0 = pb.c.clone()
    pb.start(c0, pb.dstate[:, HOST.R2].clone(), positive, tol, lam)
    rank = d if lam == 0 else NO_RANK_LIMIT

    def steps():
        launch(_pick_kernel, (P,), pb.c, pb.picked, pb.table, pb.state, pb.dstate, pb.slot_of, pb.owner,
               pb.in_support, rank, POSITIVE=positive, FACTORED=False, BLOCK_K=1, BLOCK_N=_BLOCK_N)  # no slots
        launch(_solve_kernel, (P,), atoms, pb.G, c0, pb.table, pb.state, pb.dstate, pb.support, pb.weights, pb.zero,
               pb.wslot, pb.slot_of, pb.in_support, pb.L, pb.L_saved, pb.support_old, pb.weights_old, d,
               POSITIVE=positive, FACTORED=False, BLOCK_K=pb.block_k, BLOCK_D=_BLOCK_D,
               num_warps=_solve_warps(pb.block_k))
        residual(False)
        correlate(False)

    _run(pb, steps)
    return pb.finish()


def omp_factored(errors, features, bias: bool, c0, b2, offsets: list[int], budgets: list[int], lam: float,
                 positive: bool, tol: float):
    _check_budget(budgets)
    pb = _Problems(offsets, budgets, errors.device, factored=True)
    N, C = errors.shape
    D1 = features.shape[1]
    P = pb.P
    if P == 0:
        return pb.finish()
    pb.start(c0, b2.double(), positive, tol, lam)
    rows_grid = (triton.cdiv(max(N, 1), _ROWS),)
    rank = C * (D1 + int(bias)) if lam == 0 else NO_RANK_LIMIT

    def steps():
        launch(_pick_kernel, (P,), pb.c, pb.picked, pb.table, pb.state, pb.dstate, pb.slot_of, pb.owner,
               pb.in_support, rank, POSITIVE=positive, FACTORED=True, BLOCK_K=pb.block_k, BLOCK_N=_BLOCK_N)
        launch(_gram_kernel, rows_grid, errors, features, pb.G, pb.row_problem, pb.table, pb.state, N, C, D1,
               1.0 if bias else 0.0, ROWS=_ROWS, BLOCK_D=_BLOCK_D)
        launch(_solve_kernel, (P,), errors, pb.G, c0, pb.table, pb.state, pb.dstate, pb.support, pb.weights, pb.zero,
               pb.wslot, pb.slot_of, pb.in_support, pb.L, pb.L_saved, pb.support_old, pb.weights_old, C,
               POSITIVE=positive, FACTORED=True, BLOCK_K=pb.block_k, BLOCK_D=_BLOCK_D,
               num_warps=_solve_warps(pb.block_k))
        launch(_correlate_kernel, rows_grid, errors, errors, pb.G, c0, pb.wslot, pb.c, pb.row_problem, pb.table,
               pb.state, N, 0, pb.kmax, REFRESH=False, FACTORED=True, ROWS=_ROWS, BLOCK_D=_BLOCK_D)

    _run(pb, steps)
    return pb.finish()


_BLOCK_KS = [1 << i for i in range(MAX_BUDGET.bit_length())]  # next_power_of_2 of any budget up to MAX_BUDGET


def variants():
    state = "*i64 *i64 *fp64"  # table, state, dstate
    for block_k in _BLOCK_KS:
        for positive in (False, True):
            for factored in (False, True):
                for rank in ("i32", "i64"):  # d, or NO_RANK_LIMIT
                    if factored or block_k == 1:  # only Gram-column slots use BLOCK_K
                        yield variant(_pick_kernel, f"*fp32 *i8 {state} *i64 *i64 *i8 {rank}", POSITIVE=positive,
                                      FACTORED=factored, BLOCK_K=block_k, BLOCK_N=_BLOCK_N)
                yield variant(_solve_kernel, f"*fp32 *fp32 *fp32 {state} *i64 *fp64 *i64 *fp32 *i64 *i8 *fp64 *fp64 "
                              "*i64 *fp64 i32", POSITIVE=positive, FACTORED=factored, BLOCK_K=block_k,
                              BLOCK_D=_BLOCK_D, num_warps=_solve_warps(block_k))
        for refresh in (False, True):
            yield variant(_residual_kernel, f"*fp32 *fp32 *fp32 {state} *i64 *fp64 *fp64 *fp64 *i64 *fp64 *i8 i32",
                          REFRESH=refresh, BLOCK_K=block_k, BLOCK_D=_BLOCK_D)
    for refresh, factored in ((True, False), (False, False), (False, True)):
        yield variant(_correlate_kernel, "*fp32 *fp32 *fp32 *fp32 *fp32 *fp32 *i64 *i64 *i64 i32 i32 i32",
                      REFRESH=refresh, FACTORED=factored, ROWS=_ROWS, BLOCK_D=_BLOCK_D)
    yield variant(_gram_kernel, "*fp32 *fp32 *fp32 *i64 *i64 *i64 i32 i32 i32 fp32", ROWS=_ROWS, BLOCK_D=_BLOCK_D)
