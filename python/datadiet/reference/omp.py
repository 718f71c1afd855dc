"""Reference OMP in plain PyTorch, float64: the textbook algorithm that rebuilds
``A_S A_Sᵀ + λI`` and solves it every iteration (what CORDS does), with the kernels'
selection rules, so the tests can compare selections, weights and residuals.

Rules shared with the kernels (``csrc/ops/omp/omp_rules.h``): pick the largest correlation
(w ≥ 0) or largest |correlation| among atoms never picked, above 1e-6 of the largest initial one;
reject an atom whose Schur complement in ``Q = G_SS + λI`` is at most ``PIVOT_EPS``·Q_jj
(dependent) or whose solve would raise the objective ``‖b − Σ w_s a_s‖² + λ‖w‖²`` (the support
and weights stay as they were; exact arithmetic never raises it, so this only guards rounding);
with w ≥ 0, solve the exact NNLS on the support (Lawson–Hanson) and drop atoms left at
zero; stop at the budget, at ``‖r‖ ≤ tol·‖b‖``, when no atom is left above the floor, or (λ = 0)
when the support has as many atoms as the atoms have dimensions.
"""

from __future__ import annotations

from typing import Sequence

import torch

PIVOT_EPS = 1e-6  # csrc/ops/omp/omp_rules.h: kPivotEps
MIN_CORRELATION = 1e-6  # kMinCorrelation: the pick floor, relative to the largest initial correlation
STOP_REASONS = ("budget", "tolerance", "no_correlation", "rank")  # by code: omp_rules.h Stop
STOP_BUDGET, STOP_TOLERANCE, STOP_CORRELATION, STOP_RANK = range(len(STOP_REASONS))


def nnls_gram(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """argmin_{x ≥ 0} ½ xᵀQx − pᵀx for SPD Q (Lawson–Hanson, cold start)."""
    m = p.numel()
    x = torch.zeros_like(p)
    passive: list[int] = []
    for _ in range(3 * m + 10):
        grad = p - q @ x
        free = [i for i in range(m) if i not in passive]
        if not free or float(grad[free].max()) <= 1e-12 * float(p.abs().max()):
            break
        passive.append(max(free, key=lambda i: float(grad[i])))
        while True:
            z = torch.zeros_like(p)
            z[passive] = torch.linalg.solve(q[passive][:, passive], p[passive])
            if bool((z[passive] > 0).all()):
                x = z
                break
            steps = {i: (float(x[i] / (x[i] - z[i])) if x[i] - z[i] > 0 else 0.0) for i in passive if z[i] <= 0}
            first = min(steps, key=steps.get)
            x = x + steps[first] * (z - x)
            x[first] = 0.0
            passive = [i for i in passive if x[i] > 0]
            x[[i for i in range(m) if i not in passive]] = 0.0
    return x


def omp_one(a: torch.Tensor, b: torch.Tensor, k: int, lam: float, positive: bool, tol: float):
    """Returns (support list of local indices, weights, residual norm, iterations, stop, rejected)."""
    a, b = a.double(), b.double()
    n, d = a.shape
    c0 = a @ b
    b2 = float(b @ b)
    support: list[int] = []
    w = torch.zeros(0, dtype=torch.float64)
    picked = torch.zeros(n, dtype=torch.bool)
    score0 = c0 if positive else c0.abs()
    floor = MIN_CORRELATION * max(float(score0.max()) if n else 0.0, 0.0)
    r2, objective, iterations, rejected = b2, b2, 0, 0
    if k == 0 or not b2 > 0:
        return support, w, b2 ** 0.5, 0, STOP_BUDGET if k == 0 else STOP_TOLERANCE, 0
    while True:
        if len(support) >= k:
            stop = STOP_BUDGET
            break
        if r2 <= tol * tol * b2:
            stop = STOP_TOLERANCE
            break
        if lam == 0 and len(support) >= d:
            stop = STOP_RANK
            break
        c = c0 - (a @ a[support].T) @ w if support else c0
        score = (c if positive else c.abs()).masked_fill(picked, float("-inf"))
        j = int(score.argmax())
        if not float(score[j]) > floor:
            stop = STOP_CORRELATION
            break
        iterations += 1
        picked[j] = True
        trial = support + [j]
        q = a[trial] @ a[trial].T + lam * torch.eye(len(trial), dtype=torch.float64)
        if support:
            schur = q[-1, -1] - q[-1, :-1] @ torch.linalg.solve(q[:-1, :-1], q[:-1, -1])
        else:
            schur = q[-1, -1]
        if not float(schur) > PIVOT_EPS * float(q[-1, -1]):
            rejected += 1
            continue
        p = c0[trial]
        x = torch.linalg.solve(q, p)
        if positive and not bool((x > 0).all()):
            x = nnls_gram(q, p)
            keep = [i for i in range(len(trial)) if x[i] > 0]
            trial, x = [trial[i] for i in keep], x[keep]
        trial_r2 = float((b - a[trial].T @ x).square().sum()) if trial else b2
        penalty = lam * float(x.square().sum())
        if not trial_r2 + penalty <= objective:
            rejected += 1
            continue
        support, w, r2, objective = trial, x, trial_r2, trial_r2 + penalty
    return support, w, max(r2, 0.0) ** 0.5, iterations, stop, rejected


def omp_reference(atoms: torch.Tensor, targets: torch.Tensor, offsets: Sequence[int], budgets: Sequence[int],
                  lam: float, positive: bool, tol: float) -> tuple[torch.Tensor, ...]:
    """Same outputs as ``torch.ops.datadiet.omp`` (indices padded with -1, weights with 0)."""
    indices, weights, residual, iterations, stops, rejections = [], [], [], [], [], []
    for g, k in enumerate(budgets):
        lo, hi = offsets[g], offsets[g + 1]
        support, w, r, it, stop, rejected = omp_one(atoms[lo:hi].cpu(), targets[g].cpu(), k, lam, positive, tol)
        pad = k - len(support)
        indices.append(torch.tensor([lo + s for s in support] + [-1] * pad, dtype=torch.int64))
        weights.append(torch.cat([w.float(), torch.zeros(pad)]))
        residual.append(r)
        iterations.append(it)
        stops.append(stop)
        rejections.append(rejected)
    device = atoms.device
    per_problem = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
    return (torch.cat(indices).to(device) if indices else torch.zeros(0, dtype=torch.int64, device=device),
            torch.cat(weights).to(device) if weights else torch.zeros(0, device=device),
            torch.tensor(residual, dtype=torch.float32, device=device),
            per_problem(iterations), per_problem(stops), per_problem(rejections))
