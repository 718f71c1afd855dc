"""The peers' OMP drop-ins all end the same way: ``datadiet.ops.omp`` on rows-as-atoms, its
chosen weights scattered into one dense vector over the atoms."""

from __future__ import annotations

import torch

from datadiet.ops.omp import omp


def dense_weights(atoms: torch.Tensor, target: torch.Tensor, k: int, *, lam: float, positive: bool,
                  tol: float = 0.0) -> torch.Tensor:
    """``[N]`` float32 weights (zero off the support) of ``omp(atoms [N, d], target [d], k)``, on the
    atoms' device; all zeros for ``k = 0``."""
    x = torch.zeros(atoms.shape[0], dtype=torch.float32, device=atoms.device)
    if k == 0:
        return x
    res = omp(atoms, target, k, lam=float(lam), positive=bool(positive), tol=float(tol))
    chosen = res.indices >= 0
    x[res.indices[chosen]] = res.weights[chosen]
    return x
