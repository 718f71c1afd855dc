"""Plain-PyTorch references of the model-merging ops (``backend="torch"`` and the tests' oracle),
with the kernels' rules: float32 arithmetic in model order, and magnitude pruning that keeps the
``keep`` largest ``|x|`` with equal magnitudes kept lower index first (list order, then flat
index)."""

from __future__ import annotations

import torch


def average_reference(dst: list[torch.Tensor], sources: list[torch.Tensor], weights: list[float]) -> None:
    """``dst[t] ← Σ_m weights[m] · sources[m·T + t]`` (sources model-major), accumulated in float32."""
    T = len(dst)
    for t, d in enumerate(dst):
        acc = torch.zeros(d.shape, dtype=torch.float32, device=d.device)
        for m, w in enumerate(weights):
            contribution = torch.tensor(w, dtype=torch.float32) * sources[m * T + t].float()
            acc = contribution if m == 0 else acc + contribution
        d.copy_(acc)


def lerp_reference(dst: list[torch.Tensor], other: list[torch.Tensor], alpha: float) -> None:
    a = torch.tensor(alpha, dtype=torch.float32)
    for d, o in zip(dst, other):
        x = d.float()
        d.copy_(x + a * (o.float() - x))


def magnitude_prune_reference(tensors: list[torch.Tensor], masks: list[torch.Tensor], keep: list[int]) -> None:
    """Zeroes all but the ``keep[0]`` largest magnitudes of the list (or ``keep[t]`` per tensor) and
    writes the keep masks into ``masks`` (when not empty)."""
    groups = [list(range(len(tensors)))] if len(keep) == 1 and len(tensors) != 1 else [[t] for t in range(len(tensors))]
    for members, k in zip(groups, keep):
        mags = [tensors[t].detach().float().abs().reshape(-1) for t in members]
        flat = torch.cat(mags) if mags else torch.zeros(0)
        if bool(torch.isnan(flat).any()):
            raise ValueError("datadiet.magnitude_prune_: a NaN has no magnitude order")
        order = torch.sort(flat, descending=True, stable=True).indices  # equal values: lower index first
        kept = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        kept[order[:k]] = True
        at = 0
        for t, mag in zip(members, mags):
            m = kept[at:at + mag.numel()].reshape(tensors[t].shape)
            at += mag.numel()
            if masks:
                masks[t].copy_(m)
            tensors[t].masked_fill_(~m, 0)
