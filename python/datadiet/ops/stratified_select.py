"""``stratified_select``: the difficulty classes of "ensembling on difficulty subsets".

Samples are ordered by score, cut into S contiguous strata of near-equal size, and a fraction
of each stratum is taken — at random or its top. A composition of the two selection kernels
(``topk_select`` orders, ``weighted_sample`` / ``topk_select`` pick), so it runs on every backend
they do and gives the same result on each.
"""

from __future__ import annotations

import math
import numbers

import torch

from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample

MODES = ("random", "top")


def stratified_select(
    scores: torch.Tensor,
    strata: int,
    fraction: float,
    *,
    seed: int = 0,
    mode: str = "random",
    backend: str = "auto",
) -> list[torch.Tensor]:
    """One int64 index tensor per stratum, stratum 0 holding the lowest scores.

    Order: ascending score, ties by lower index, NaN last (``topk_select``'s rule). Stratum
    sizes follow ``numpy.array_split``: the first ``n % strata`` strata get one extra sample.
    Stratum s of size n_s yields ``floor(fraction · n_s + 0.5)`` picks:

    - ``mode="random"``: uniform without replacement within the stratum (seeded), in draw order;
    - ``mode="top"``: the stratum's highest scores, highest first.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError("datadiet.stratified_select: scores must be a 1-D tensor, got "
                         + (f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__))
    n = scores.numel()
    if isinstance(strata, bool) or not isinstance(strata, int) or not 1 <= strata <= max(n, 1):
        raise ValueError(f"datadiet.stratified_select: strata must be an int in [1, {max(n, 1)}] (n = {n}), "
                         f"got {strata!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"datadiet.stratified_select: fraction must be in (0, 1], got {fraction!r}")
    if mode not in MODES:
        raise ValueError(f"datadiet.stratified_select: mode must be one of {MODES}, got {mode!r}")
    sizes = [n // strata + (1 if s < n % strata else 0) for s in range(strata)]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    ks = [math.floor(fraction * size + 0.5) for size in sizes]
    order = topk_select(scores, n, largest=False, backend=backend)
    if mode == "random":
        ones = torch.ones(n, dtype=torch.float32, device=scores.device)
        positions = weighted_sample(ones, ks, seed=seed, offsets=offsets, check_values=False, backend=backend)
    else:
        positions = topk_select(scores[order], ks, largest=True, offsets=offsets, backend=backend)
    return list(torch.split(order[positions], ks))
