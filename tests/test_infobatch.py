"""InfoBatch: no pruning before every sample has a loss, the pruned fraction of the below-mean
samples, the 1/(1 − r) rescaling of the kept ones, full data from the annealing epoch on, seeded
draws, the score table across a resume, and the loss divided by the sample count (not Σ w)."""

import math

import pytest
import torch

from datadiet import strategies
from datadiet.train.driver import Driver
from tests.test_strategies import N, context


def _infobatch(epochs=8, **params):
    s = strategies.make("infobatch", **params)
    s.setup(context(epochs=epochs))
    return s


def _observe(s, seed):
    losses = torch.rand(N, generator=torch.Generator().manual_seed(seed)) ** 2
    s.observe(torch.arange(N), losses, torch.zeros(N, dtype=torch.bool))
    return losses


def test_no_pruning_until_every_sample_has_a_loss():
    s = _infobatch()
    first = s.select(0)
    assert len(first) == N and first.weights is None and s.report()["reason"] == "scores incomplete"
    s.observe(torch.arange(N - 1), torch.rand(N - 1), torch.zeros(N - 1, dtype=torch.bool))
    assert len(s.select(1)) == N  # one sample still without a loss


@pytest.mark.parametrize("prune", [0.3, 0.5, 0.9])
def test_prunes_below_mean_and_rescales(prune):
    s = _infobatch(prune=prune)
    losses = _observe(s, 1)
    sel = s.select(1).validate(N)
    well = losses < losses.mean()
    dropped = set(range(N)) - set(sel.indices.tolist())
    assert len(dropped) == math.floor(prune * int(well.sum())) == s.report()["pruned"]
    assert all(bool(well[i]) for i in dropped)  # only well-learned samples sit out
    w = dict(zip(sel.indices.tolist(), sel.weights.tolist()))
    assert all(w[i] == pytest.approx(1 / (1 - prune)) for i in range(N) if i not in dropped and well[i])
    assert all(w[i] == 1.0 for i in range(N) if not well[i])
    again = _infobatch(prune=prune)
    _observe(again, 1)
    assert torch.equal(again.select(1).indices, sel.indices)  # seeded by (seed, epoch)
    assert not torch.equal(s.select(2).indices, sel.indices)  # a fresh draw each epoch


def test_a_non_finite_loss_keeps_its_sample_and_pruning_on():
    s = _infobatch()
    losses = _observe(s, 4)
    s.observe(torch.tensor([7, 9]), torch.tensor([float("nan"), float("inf")]), torch.zeros(2, dtype=torch.bool))
    sel = s.select(1)
    assert len(sel) < N and {7, 9} <= set(sel.indices.tolist())
    finite = torch.ones(N, dtype=torch.bool)
    finite[[7, 9]] = False
    assert s.report()["threshold"] == pytest.approx(float(losses[finite].mean()))


def test_annealing_epochs_train_on_everything():
    s = _infobatch(epochs=8, anneal=0.25)  # prunes in epochs < 6
    _observe(s, 2)
    assert [len(s.select(e)) < N for e in range(1, 8)] == [True] * 5 + [False] * 2
    assert s.select(6).weights is None and s.report()["reason"] == "annealing"
    assert s.planned_size(0) == N and s.planned_size(3) == N - math.floor(0.5 * N / 2) and s.planned_size(7) == N


def test_scores_resume():
    a = _infobatch()
    _observe(a, 3)
    b = _infobatch()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.select(4).indices, b.select(4).indices)


@pytest.mark.parametrize("params, message", [({"prune": 1.0}, r"prune must be in \[0, 1\)"),
                                             ({"anneal": -0.1}, r"anneal must be in \[0, 1\]")])
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        _infobatch(**params)


def test_loss_is_divided_by_the_sample_count():
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.arange(8) % 2)
    model = torch.nn.Linear(3, 2)
    losses, weights, indices = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 2.0]), torch.arange(3)
    for name, expected in (("infobatch", (2 + 2 + 6) / 3), ("random", (2 + 2 + 6) / 5)):
        params = {"fraction": 0.5} if name == "random" else {}
        driver = Driver(strategies.make(name, **params), model, data, torch.arange(8) % 2, num_classes=2, epochs=2)
        assert float(driver.loss(losses, indices, weights)) == pytest.approx(expected)


def test_reproduction_reports_savings_at_tiny_scale(tmp_path):
    import json

    from datadiet.cli import main as cli

    assert cli(["reproduce", "infobatch", "--prunes", "0.5", "--seeds", "0", "--epochs", "3", "--out", str(tmp_path),
                "--no-progress"]) == 0
    row = json.load(open(tmp_path / "infobatch.json"))["rows"][0]
    # epoch 0 whole (no losses yet), epochs 1 and 2 pruned (prunes in e < (1 - 0.125) · 3)
    assert 0.0 < row["saved_mean"] < 0.5 and 0.0 <= row["infobatch_mean"] <= 1.0
    assert (tmp_path / "infobatch.csv").read_text().count("\n") == 2
