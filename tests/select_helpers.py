"""Oracles shared by the selection tests: plain-Python definitions of the ordering rule."""

from __future__ import annotations

import math

import torch

import datadiet


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


def last_layer_case(n, classes, features, seed=0):
    """Training errors p − onehot of random logits, ReLU features and the labels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    labels = torch.randint(0, classes, (n,), generator=g)
    e = datadiet.ce_scores(logits, labels, return_embedding=True).embedding
    h = torch.relu(torch.randn(n, features, generator=g))
    return e, h, labels
