"""Reference OMP in plain PyTorch, float64: the textbook algorithm that rebuilds
``A_S A_Sᵀ + λI`` and solves it every iteration (what CORDS does), with the kernels'
selection rules, so the tests can compare selections, weights and residuals.

Rules shared with ``csrc/ops/omp/omp_engine_cpu.h``: pick the largest correlation (w ≥ 0)
or largest |correlation| among atoms never picked, above 1e-6 of the largest initial one;
skip an atom whose Schur complement in ``Q = G_SS + λI`` is below 1e-9·Q_jj (dependent); with
w ≥ 0, solve the exact NNLS on the support (Lawson–Hanson) and drop atoms left at zero; stop
at the budget or at ``‖r‖ ≤ tol·‖b‖``.
"""

from __future__ import annotations

from typing import Sequence

import torch


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
    """Returns (support list of local indices, weights, residual norm, iterations)."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    c0 = a @ b
    b2 = float(b @ b)
    support: list[int] = []
    w = torch.zeros(0, dtype=torch.float64)
    picked = torch.zeros(n, dtype=torch.bool)
    score0 = c0 if positive else c0.abs()
    floor = 1e-6 * max(float(score0.max()) if n else 0.0, 0.0)
    r2, iterations = b2, 0
    while k > 0 and n > 0 and b2 > 0 and len(support) < k and r2 > tol * tol * b2:
        c = c0 - (a @ a[support].T) @ w if support else c0
        score = (c if positive else c.abs()).masked_fill(picked, float("-inf"))
        j = int(score.argmax())
        if not float(score[j]) > floor:
            break
        iterations += 1
        picked[j] = True
        trial = support + [j]
        q = a[trial] @ a[trial].T + lam * torch.eye(len(trial), dtype=torch.float64)
        if support:
            schur = q[-1, -1] - q[-1, :-1] @ torch.linalg.solve(q[:-1, :-1], q[:-1, -1])
        else:
            schur = q[-1, -1]
        if not float(schur) > 1e-9 * float(q[-1, -1]):
            continue
        p = c0[trial]
        x = torch.linalg.solve(q, p)
        if positive and not bool((x > 0).all()):
            x = nnls_gram(q, p)
            keep = [i for i in range(len(trial)) if x[i] > 0]
            trial, x = [trial[i] for i in keep], x[keep]
        support, w = trial, x
        g = a[support] @ a[support].T
        r2 = b2 - 2 * float(w @ c0[support]) + float(w @ g @ w)
    return support, w, max(r2, 0.0) ** 0.5, iterations


def omp_reference(atoms: torch.Tensor, targets: torch.Tensor, offsets: Sequence[int], budgets: Sequence[int],
                  lam: float, positive: bool, tol: float) -> tuple[torch.Tensor, ...]:
    """Same outputs as ``torch.ops.datadiet.omp`` (indices padded with -1, weights with 0)."""
    indices, weights, residual, iterations = [], [], [], []
    for g, k in enumerate(budgets):
        lo, hi = offsets[g], offsets[g + 1]
        support, w, r, it = omp_one(atoms[lo:hi].cpu(), targets[g].cpu(), k, lam, positive, tol)
        pad = k - len(support)
        indices.append(torch.tensor([lo + s for s in support] + [-1] * pad, dtype=torch.int64))
        weights.append(torch.cat([w.float(), torch.zeros(pad)]))
        residual.append(r)
        iterations.append(it)
    device = atoms.device
    return (torch.cat(indices).to(device) if indices else torch.zeros(0, dtype=torch.int64, device=device),
            torch.cat(weights).to(device) if weights else torch.zeros(0, device=device),
            torch.tensor(residual, dtype=torch.float32, device=device),
            torch.tensor(iterations, dtype=torch.int64, device=device))
