"""topk_select, weighted_sample and selective_backprop_keep_ reject bad input with an error naming
the argument and the value — from the wrapper on every backend, and from the C++ ops called raw."""

import pytest
import torch

from datadiet.ops import selective_backprop_keep_, topk_select, weighted_sample


def run(op, x, k, **kw):
    if op == "topk":
        return topk_select(x, k, **kw)
    return weighted_sample(x, k, seed=0, **kw)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("op", ["topk", "sample"])
@pytest.mark.parametrize("x, k, kw, exc, pattern", [
    (torch.rand(5), 6, {}, ValueError, r"k = 6 but there are 5 elements; need 0 <= k <= 5"),
    (torch.rand(5), -1, {}, ValueError, r"k = -1 but there are 5 elements"),
    (torch.rand(5), 1.5, {}, TypeError, r"k must be an int"),
    (torch.rand(2, 3, 4), 1, {}, ValueError, r"must be 1-D \[n\] or 2-D \[B, n\] \(rows\), got shape \(2, 3, 4\)"),
    (torch.rand(6), [1, 2], {"offsets": [0, 3, 5]}, ValueError, r"offsets must start at 0 and end at .*numel\(\) = 6"),
    (torch.rand(6), [1, 1], {"offsets": [0, 2, 4, 6]}, ValueError, r"got 2 values of k for 3 segments"),
    (torch.rand(6), 1, {"offsets": [0, 4, 2, 6]}, ValueError, r"offsets must be non-decreasing, got offsets\[1\] = 4 > offsets\[2\] = 2"),
    (torch.rand(6), [1, 4], {"offsets": [0, 3, 6]}, ValueError, r"k = 4 for segment 1 but there are 3 elements"),
    (torch.rand(6), 1, {"offsets": [0, 3, 6], "groups": torch.zeros(6, dtype=torch.long)}, ValueError,
     "pass offsets or groups, not both"),
    (torch.rand(6), 1, {"groups": torch.tensor([0, 1, -1, 0, 1, 0])}, ValueError, r"groups\[2\] = -1 is negative"),
    (torch.rand(6), 1, {"groups": torch.zeros(5, dtype=torch.long)}, ValueError, r"groups must have shape \(6,\), got \(5,\)"),
    (torch.rand(6), 1, {"groups": torch.zeros(6)}, TypeError, r"groups must be an integer tensor of group ids, got torch.float32"),
    (torch.rand(6), 3, {"groups": torch.tensor([0, 0, 0, 1, 1, 0])}, ValueError, r"k = 3 for segment 1 but there are 2"),
    (torch.arange(6), 1, {}, TypeError, r"must be float32, float16 or bfloat16, got torch.int64"),
])
def test_bad_layouts(op, x, k, kw, exc, pattern, backend):
    with pytest.raises(exc, match=pattern):
        run(op, x, k, backend=backend, **kw)


def test_float64_scores_are_rejected_not_rounded():
    with pytest.raises(TypeError, match=r"got torch.float64; rounding float64 could create ties"):
        topk_select(torch.rand(4, dtype=torch.float64), 2)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("bad, pattern", [
    (-1.0, r"weights must be finite and >= 0, got weights\[2\] = -1(\.0)?$"),
    (float("nan"), r"weights\[2\] = nan"),
    (float("inf"), r"weights\[2\] = inf"),
])
def test_bad_weight_values(bad, pattern, backend):
    w = torch.tensor([1.0, 2.0, bad, 4.0])
    with pytest.raises(ValueError, match=pattern):
        weighted_sample(w, 1, seed=0, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_more_draws_than_positive_weights(backend):
    w = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 3.0])
    with pytest.raises(ValueError, match=r"k = 3 for segment 1 but only 2 of its weights are positive"):
        weighted_sample(w, [1, 3], offsets=[0, 2, 6], seed=0, backend=backend)


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match=r"seed must be an int, got 1.5"):
        weighted_sample(torch.rand(3), 1, seed=1.5)


@pytest.mark.parametrize("call, pattern", [
    (lambda: torch.ops.datadiet.topk_select(torch.rand(5), [0, 5], [6], True),
     r"datadiet.topk_select: k = 6 for segment 0 of 5 elements"),
    (lambda: torch.ops.datadiet.topk_select(torch.rand(5), [0, 4], [1], True),
     r"offsets must start at 0 and end at scores.numel\(\) = 5"),
    (lambda: torch.ops.datadiet.topk_select(torch.rand(5), [0, 5], [1, 2], True), r"need one k per segment"),
    (lambda: torch.ops.datadiet.topk_select(torch.rand(2, 5), [0, 10], [1], True), r"scores must be 1-D, got shape \[2, 5\]"),
    (lambda: torch.ops.datadiet.topk_select(torch.rand(10)[::2], [0, 5], [1], True), r"scores must be contiguous"),
    (lambda: torch.ops.datadiet.weighted_sample(torch.tensor([1.0, -2.0]), [0, 2], [1], 0),
     r"datadiet.weighted_sample: weights must be finite and >= 0, got weights\[1\] = -2"),
    (lambda: torch.ops.datadiet.weighted_sample(torch.tensor([1.0, 0.0]), [0, 2], [2], 0),
     r"only 1 of its weights are positive"),
])
def test_raw_ops_check_their_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("kwargs, exc, pattern", [
    ({"history": torch.zeros(0)}, ValueError, r"history must be a non-empty contiguous 1-D float32 tensor"),
    ({"history": torch.zeros(4, dtype=torch.float64)}, ValueError, r"got torch.float64 of shape \(4,\)"),
    ({"state": torch.zeros(3, dtype=torch.long)}, ValueError, r"state must be int64 \[2\]"),
    ({"losses": torch.rand(2, 2)}, ValueError, r"losses must be a 1-D float tensor"),
    ({"beta": -0.5}, ValueError, r"beta must be >= 0, got -0.5"),
    ({"step": 1.0}, TypeError, r"step must be an int, got 1.0"),
])
def test_selective_backprop_bad_input(kwargs, exc, pattern):
    args = {"losses": torch.rand(3), "history": torch.zeros(4), "state": torch.zeros(2, dtype=torch.long),
            "beta": 1.0, "seed": 0, "step": 0} | kwargs
    with pytest.raises(exc, match=pattern):
        selective_backprop_keep_(args.pop("losses"), args.pop("history"), args.pop("state"), **args)
