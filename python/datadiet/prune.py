"""One-shot global magnitude pruning of a model (LiPT prunes every worker model once, with a
density drawn from U[0.85, 0.95]), over ``datadiet.ops.magnitude_prune_``: the weights are
zeroed in place, with no re-parametrisation (no ``*_orig`` / ``*_mask``), and the masks are
returned by parameter name."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from datadiet.ops.merge import magnitude_prune_

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def prunable(model: nn.Module, *, biases: bool = False, norms: bool = False) -> dict[str, nn.Parameter]:
    """The floating-point parameters magnitude pruning applies to: by default every weight except
    biases and the parameters of normalisation layers (BatchNorm, LayerNorm, GroupNorm, ...)."""
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, _NORMS) and not norms:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if (pname == "bias" and not biases) or not p.dtype.is_floating_point:
                continue
            out[f"{mname}.{pname}" if mname else pname] = p
    return out


@torch.no_grad()
def magnitude(model: nn.Module, density: float, *, scope: str = "global", biases: bool = False,
              norms: bool = False, backend: str = "auto") -> dict[str, torch.Tensor]:
    """Keeps the ``density`` fraction of largest-magnitude weights of ``prunable(model)`` (over all of
    them with ``scope="global"``, per tensor with ``"tensor"``) and zeroes the rest in place; the
    kept count equals ``prune.global_unstructured(..., L1Unstructured, amount=1 − density)``'s.
    Returns the boolean keep masks by parameter name."""
    params = prunable(model, biases=biases, norms=norms)
    masks = magnitude_prune_(list(params.values()), density, scope=scope, backend=backend)
    return dict(zip(params.keys(), masks))


def worker_densities(workers: int, low: float = 0.85, high: float = 0.95, *, seed: int = 0) -> list[float]:
    """One density per worker drawn from U[low, high] with a seeded generator (LiPT: U[0.85, 0.95])."""
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"datadiet.prune.worker_densities: need 0 < low <= high <= 1, got low={low}, high={high}")
    if workers < 0:
        raise ValueError(f"datadiet.prune.worker_densities: workers must be >= 0, got {workers}")
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(workers, generator=g, dtype=torch.float64)).tolist()


def sparsity(model: nn.Module, params: Optional[dict[str, torch.Tensor]] = None) -> float:
    """The fraction of zeros among ``params`` (default ``prunable(model)``)."""
    params = prunable(model) if params is None else params
    total = sum(p.numel() for p in params.values())
    return sum(int((p == 0).sum()) for p in params.values()) / max(total, 1)
