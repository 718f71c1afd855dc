"""stratified_select: strata boundaries, pick counts, both modes, reproducibility and backends."""

import math

import pytest
import torch

from datadiet.ops import stratified_select
from select_helpers import oracle_topk


def test_top_mode_takes_each_strata_highest_scores():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 40, (103,), generator=g).float()
    picks = stratified_select(s, 4, 0.3, mode="top")
    order = oracle_topk(s, 103, largest=False)  # ascending, ties by index
    sizes = [26, 26, 26, 25]
    start = 0
    for p, size in zip(picks, sizes):
        stratum = order[start:start + size]
        m = math.floor(0.3 * size + 0.5)
        want = [stratum[j] for j in oracle_topk(s[stratum], m, largest=True)]
        assert p.tolist() == want
        start += size


def test_random_mode_stays_within_strata_and_repeats_with_the_seed():
    s = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    picks = stratified_select(s, 5, 0.1, seed=3)
    order = torch.argsort(s, stable=True)
    rank = torch.empty(1000, dtype=torch.long)
    rank[order] = torch.arange(1000)
    for stratum, p in enumerate(picks):
        assert p.numel() == 20 and len(set(p.tolist())) == 20
        assert bool(((rank[p] // 200) == stratum).all())
    again = stratified_select(s, 5, 0.1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(picks, again))
    assert not torch.equal(stratified_select(s, 5, 0.1, seed=4)[0], picks[0])


def test_backends_agree_and_edge_sizes():
    s = torch.randn(50)
    for mode in ("random", "top"):
        a = stratified_select(s, 3, 0.5, seed=1, mode=mode, backend="cpu")
        b = stratified_select(s, 3, 0.5, seed=1, mode=mode, backend="torch")
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [p.numel() for p in stratified_select(s, 50, 1.0)] == [1] * 50
    assert [p.numel() for p in stratified_select(torch.empty(0), 1, 0.5)] == [0]


@pytest.mark.parametrize("args, kwargs, pattern", [
    ((torch.randn(10), 0, 0.5), {}, r"strata must be an int in \[1, 10\]"),
    ((torch.randn(10), 11, 0.5), {}, r"strata must be an int in \[1, 10\] \(n = 10\), got 11"),
    ((torch.randn(10), 2, 0.0), {}, r"fraction must be in \(0, 1\], got 0.0"),
    ((torch.randn(10), 2, 1.5), {}, r"fraction must be in \(0, 1\], got 1.5"),
    ((torch.randn(10), 2, 0.5), {"mode": "bottom"}, r"mode must be one of \('random', 'top'\), got 'bottom'"),
    ((torch.randn(2, 5), 2, 0.5), {}, r"scores must be a 1-D tensor, got shape \(2, 5\)"),
])
def test_bad_arguments(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        stratified_select(*args, **kwargs)
