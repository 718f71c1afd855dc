"""Selective-Backprop: the keep_ op against its reference (history, state, percentiles, coins),
its keep rate, and SelectiveBackpropSelector (both rules, resume from state_dict)."""

import pytest
import torch

from datadiet.ops import selective_backprop_keep_
from datadiet.reference import selective_backprop_keep_reference
from datadiet.select import SelectiveBackpropSelector


def batches(count, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) * 5 for _ in range(count)]


def fresh(size):
    return torch.zeros(size), torch.zeros(2, dtype=torch.int64)


@pytest.mark.parametrize("size, n", [(16, 5), (16, 40), (1024, 256), (1, 3)])
def test_matches_reference_step_by_step(size, n):
    h1, s1 = fresh(size)
    h2, s2 = fresh(size)
    for step, losses in enumerate(batches(6, n, seed=size + n)):
        keep, pct = selective_backprop_keep_(losses, h1, s1, beta=2.0, seed=3, step=step)
        want_keep, want_pct = selective_backprop_keep_reference(losses, h2, s2, 2.0, 3, step)
        assert torch.equal(keep, want_keep) and torch.equal(pct, want_pct)
        assert torch.equal(h1, h2) and torch.equal(s1, s2)


def test_percentile_counts_strictly_below_over_the_filled_history():
    h, s = fresh(8)
    selective_backprop_keep_(torch.tensor([1.0, 2.0, 3.0]), h, s, beta=1.0, seed=0, step=0)
    _, pct = selective_backprop_keep_(torch.tensor([2.0, 0.5, 9.0]), h, s, beta=1.0, seed=0, step=1)
    # history now [1, 2, 3, 2, 0.5, 9], 6 filled
    assert pct.tolist() == pytest.approx([2 / 6, 0 / 6, 5 / 6])
    assert s.tolist() == [6, 6]
    selective_backprop_keep_(torch.arange(5.0), h, s, beta=1.0, seed=0, step=2)  # wraps around
    assert s.tolist() == [3, 8]
    assert h.tolist() == [2.0, 3.0, 4.0, 2.0, 0.5, 9.0, 0.0, 1.0]


def test_keep_rate_is_one_over_beta_plus_one():
    for beta in (1.0, 3.0):
        h, s = fresh(1024)
        kept = total = 0
        for step, losses in enumerate(batches(60, 256, seed=1)):
            keep, _ = selective_backprop_keep_(losses, h, s, beta=beta, seed=5, step=step)
            if step >= 4:
                kept, total = kept + int(keep.sum()), total + keep.numel()
        assert abs(kept / total - 1 / (beta + 1)) < 0.02


def test_beta_zero_keeps_all_and_nan_is_never_kept():
    h, s = fresh(32)
    keep, _ = selective_backprop_keep_(torch.rand(10), h, s, beta=0.0, seed=0, step=0)
    assert keep.all()
    keep, _ = selective_backprop_keep_(torch.tensor([float("nan"), 1e9]), h, s, beta=0.5, seed=0, step=1)
    assert not keep[0]


def test_cpu_rejects_an_invalid_state():
    h, s = fresh(8)
    s[:] = torch.tensor([3, 5])
    with pytest.raises(ValueError, match=r"state = \[3, 5\] is not a valid"):
        selective_backprop_keep_(torch.rand(2), h, s, beta=1.0, seed=0, step=0)


@pytest.mark.parametrize("method", ["jiang", "composer"])
def test_selector_resumes_exactly(method):
    data = batches(10, 64, seed=2)
    a = SelectiveBackpropSelector(method, beta=2.0, history_size=100, keep=0.3, seed=7)
    first = [a.keep_mask(x) for x in data]
    b = SelectiveBackpropSelector(method, beta=2.0, history_size=100, keep=0.3, seed=7)
    for x in data[:4]:
        b.keep_mask(x)
    saved = b.state_dict()
    c = SelectiveBackpropSelector(method, beta=2.0, history_size=100, keep=0.3, seed=7)
    c.load_state_dict(saved)
    assert all(torch.equal(c.keep_mask(x), m) for x, m in zip(data[4:], first[4:]))


def test_composer_keeps_exactly_int_keep_n_with_rank_weights():
    from test_weighted_sample import exact_probabilities

    losses = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0, 9.0])
    rank = [2, 0, 3, 1, 4, 5]  # ascending loss rank of each sample
    inclusion, _ = exact_probabilities([(r + 0.5) / 6 for r in rank], 3)  # keep = 0.5: exponent 1
    sel = SelectiveBackpropSelector("composer", keep=0.5, seed=0)
    runs = 4000
    hits = torch.zeros(6)
    for _ in range(runs):
        idx = sel.select(losses)
        assert idx.numel() == 3 and len(set(idx.tolist())) == 3
        hits[idx] += 1
    for p_hat, p in zip((hits / runs).tolist(), inclusion):
        assert abs(p_hat - p) <= 5 * (p * (1 - p) / runs) ** 0.5


def test_jiang_select_returns_kept_indices():
    sel = SelectiveBackpropSelector("jiang", beta=1.0, seed=1, history_size=64)
    losses = torch.rand(64)
    mask = SelectiveBackpropSelector("jiang", beta=1.0, seed=1, history_size=64).keep_mask(losses)
    assert torch.equal(sel.select(losses), mask.nonzero().squeeze(1))


@pytest.mark.parametrize("change, pattern", [
    ({"method": "composer"}, "saved method"), ({"seed": 1}, "saved seed"), ({"history_size": 10}, "history has shape"),
])
def test_selector_load_validates(change, pattern):
    saved = SelectiveBackpropSelector("jiang", seed=0, history_size=20).state_dict()
    kwargs = {"method": "jiang", "seed": 0, "history_size": 20} | change
    with pytest.raises(ValueError, match=pattern):
        SelectiveBackpropSelector(**kwargs).load_state_dict(saved)


def test_selector_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        SelectiveBackpropSelector("random")
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got 0"):
        SelectiveBackpropSelector("composer", keep=0)
    with pytest.raises(ValueError, match="beta must be >= 0, got -1"):
        SelectiveBackpropSelector(beta=-1)
    with pytest.raises(ValueError, match="losses must be a 1-D tensor"):
        SelectiveBackpropSelector().keep_mask(torch.rand(2, 2))


def test_opcheck():
    h, s = fresh(16)
    torch.library.opcheck(torch.ops.datadiet.selective_backprop_keep_.default, (torch.rand(5), h, s, 2.0, 1, 0))
