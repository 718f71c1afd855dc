"""Oracles shared by the selection tests: plain-Python definitions of the ordering rule."""

from __future__ import annotations

import math

import torch


def rank_key(value: float, index: int, largest: bool):
    """Sort key of (value, index) under topk_select's rule: best first, NaN last, ties to the lower index."""
    if math.isnan(value):
        return (1, 0.0, index)
    return (0, -value if largest else value, index)


def oracle_topk(values: torch.Tensor, k: int, largest: bool) -> list[int]:
    vals = values.float().tolist()
    return sorted(range(len(vals)), key=lambda i: rank_key(vals[i], i, largest))[:k]


def ragged_offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out
