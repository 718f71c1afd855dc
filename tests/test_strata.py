"""``strata``: the kept samples are exactly a draw from stratum J of a plain sort (globally or per
class), sizes follow the budget, seeds decide the draw, NaN counts as hardest, and a budget the
stratum cannot hold is refused with the largest fraction that fits."""

import pytest
import torch

from datadiet import strategies
from datadiet.scores import ScoreTable
from datadiet.select._budget import class_budgets
from datadiet.strategies.base import Context


def _table(difficulty: torch.Tensor) -> ScoreTable:
    n = difficulty.numel()
    z = torch.zeros(n)
    return ScoreTable(difficulty.clone(), difficulty.clone(), difficulty.clone(), z, z, z, z.bool(), z.long())


def _strategy(difficulty, labels, num_classes, seed=0, **params):
    s = strategies.make("strata", **{"pretrain_epochs": 0, **params})
    s.setup(Context(n=difficulty.numel(), labels=labels, num_classes=num_classes, epochs=3, seed=seed, batch_size=8,
                    lr=0.1, score=lambda split="train", **kw: _table(difficulty), proxy_scores=None, has_val=False))
    return s


def _stratum(values: torch.Tensor, strata: int, j: int) -> set:
    """Positions of stratum j by a plain stable sort: ascending, NaN last, ties by position."""
    keys = [(1 if v != v else 0, v if v == v else 0.0, i) for i, v in enumerate(values.tolist())]
    order = [i for *_, i in sorted(keys)]
    n = len(order)
    sizes = [n // strata + (1 if s < n % strata else 0) for s in range(strata)]
    start = sum(sizes[:j])
    return set(order[start:start + sizes[j]])


@pytest.mark.parametrize("n, strata, j, fraction", [(1, 1, 0, 1.0), (10, 3, 0, 0.4), (10, 3, 2, 0.3), (101, 4, 3, 0.2),
                                                    (300, 5, 1, 0.2), (64, 64, 17, 1 / 64)])
@pytest.mark.parametrize("score", ["grand", "el2n", "loss"])
def test_global_draw_lies_in_the_stratum(n, strata, j, fraction, score):
    g = torch.Generator().manual_seed(n + j)
    d = torch.randint(0, max(2, n // 3), (n,), generator=g).float()  # ties across stratum edges
    d[::7] = float("nan")
    s = _strategy(d, torch.zeros(n, dtype=torch.long), 1, score=score, strata=strata, stratum=j, fraction=fraction)
    picks = s.select(0).indices
    assert picks.numel() == s.budget == s.planned_size(0)
    assert len(set(picks.tolist())) == picks.numel()
    assert set(picks.tolist()) <= _stratum(d, strata, j)


def test_per_class_draw_keeps_the_class_balance():
    n, classes = 400, 4
    g = torch.Generator().manual_seed(3)
    labels = torch.randperm(n, generator=g) % classes
    d = torch.randn(n, generator=g) + labels.float() * 10  # a global ranking would take one class only
    s = _strategy(d, labels, classes, strata=3, stratum=2, fraction=0.25, per_class=True)
    picks = s.select(0).indices
    counts = torch.bincount(labels, minlength=classes).tolist()
    assert torch.bincount(labels[picks], minlength=classes).tolist() == class_budgets(counts, s.budget)
    for c in range(classes):
        members = torch.nonzero(labels == c).flatten()
        mine = set(picks[labels[picks] == c].tolist())
        assert mine <= {int(members[p]) for p in _stratum(d[members], 3, 2)}
    flat = _strategy(d, labels, classes, strata=4, stratum=3, fraction=0.25).select(0).indices
    assert set(labels[flat].tolist()) == {3}  # the hardest quarter globally: the shifted class alone


def test_seed_decides_the_draw_and_the_whole_stratum_is_deterministic():
    d = torch.arange(300.0)
    a = _strategy(d, torch.zeros(300, dtype=torch.long), 1, seed=0, strata=3, stratum=1, fraction=0.2).select(0)
    b = _strategy(d, torch.zeros(300, dtype=torch.long), 1, seed=0, strata=3, stratum=1, fraction=0.2).select(0)
    c = _strategy(d, torch.zeros(300, dtype=torch.long), 1, seed=1, strata=3, stratum=1, fraction=0.2).select(0)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    whole = _strategy(d, torch.zeros(300, dtype=torch.long), 1, seed=5, strata=3, stratum=1, fraction=1 / 3).select(0)
    assert whole.indices.tolist() == list(range(100, 200))


@pytest.mark.parametrize("params, message", [
    ({}, "strata: stratum = None: give the stratum kept, 0 (easiest) to 2 (hardest)"),
    ({"stratum": 3}, "strata: stratum must be an int in [0, 2] (0 = easiest of strata = 3), got 3"),
    ({"stratum": 0, "strata": 0}, "strata: strata must be an int >= 1"),
    ({"stratum": 0, "score": "forgetting"}, "strata: score must be one of"),
])
def test_bad_parameters_are_refused_at_construction(params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        strategies.make("strata", **params)


def test_a_budget_the_stratum_cannot_hold_is_refused_with_the_largest_fraction():
    d = torch.arange(10.0)
    with pytest.raises(ValueError, match=r"asks 4 samples of the stratum 2, which holds 3 .* at most 0\.3,"):
        _strategy(d, torch.zeros(10, dtype=torch.long), 1, strata=3, stratum=2, fraction=0.4)
    with pytest.raises(ValueError, match="strata = 11 is more than the pool's 10 samples"):
        _strategy(d, torch.zeros(10, dtype=torch.long), 1, strata=11, stratum=0, fraction=0.05)
    labels = torch.tensor([0] * 4 + [1] * 6)
    with pytest.raises(ValueError, match=r"class 0's stratum 1, which holds 1 .*at most 0\.2,"):
        _strategy(d, labels, 2, strata=3, stratum=1, fraction=0.3, per_class=True)
    ok = _strategy(d, labels, 2, strata=3, stratum=1, fraction=0.2, per_class=True).select(0).indices
    assert torch.bincount(labels[ok], minlength=2).tolist() == [1, 2]


def test_the_fraction_a_refusal_names_is_accepted():
    """Over many pool sizes, strata and strata kept: the largest fraction the refusal names fits,
    and a fraction a little above the stratum's share is refused."""
    import re

    for n in range(3, 40):
        for strata in range(2, min(n, 6) + 1):
            for j in range(strata):
                d = torch.arange(float(n))
                with pytest.raises(ValueError, match="at most") as refused:
                    _strategy(d, torch.zeros(n, dtype=torch.long), 1, strata=strata, stratum=j, fraction=1.0)
                most = float(re.search(r"at most ([0-9.e-]+),", str(refused.value)).group(1))
                s = _strategy(d, torch.zeros(n, dtype=torch.long), 1, strata=strata, stratum=j, fraction=most)
                assert s.select(0).indices.numel() == s.budget <= n // strata + (j < n % strata)


def test_per_class_strata_need_classes_at_least_as_large():
    labels = torch.tensor([0, 0] + [1] * 10)
    with pytest.raises(ValueError, match="class 0 holds 2 samples: use fewer strata or per_class = False"):
        _strategy(torch.arange(12.0), labels, 2, strata=3, stratum=0, fraction=0.1, per_class=True)


def test_the_stratum_range_ignores_nan_scores():
    d = torch.tensor([0.0, 1.0, float("nan"), float("nan")])
    s = _strategy(d, torch.zeros(4, dtype=torch.long), 1, strata=2, stratum=1, fraction=0.5)
    assert sorted(s.select(0).indices.tolist()) == [2, 3]
    assert s.report()["stratum_score_min"] is None
