"""Selection that pays for itself: the loop's guard stretching a costly periodic strategy's
re-selection interval (``max_selection_share``), candidate pools (``pool=P``) and reduced-size
scoring in ``train``. Times are real (a strategy that sleeps), with margins far beyond a
scheduler's noise."""

import dataclasses
import math
import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from datadiet.strategies import make
from datadiet.strategies.static import Random
from datadiet.train.config import TrainConfig
from datadiet.train.driver import Driver
from tests.train_fixtures import image_folder, requires_torchvision


@dataclasses.dataclass
class SlowRandom(Random):
    """``random`` whose every round takes ``delay`` seconds more: a costly selection."""

    name = "slow_random"
    delay: float = 0.0

    def choose(self, epoch):
        time.sleep(self.delay)
        return super().choose(epoch)


def _data(n=120, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.bucketize(x[:, 0].contiguous(), torch.tensor([-0.4, 0.4]))
    return TensorDataset(x, y), y, classes


def _run(strategy, share, epochs=6, step_sleep=0.0, driver_out=None):
    data, y, classes = _data()
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, classes))
    drv = Driver(strategy, model, data, y, num_classes=classes, epochs=epochs, batch_size=40,
                 max_selection_share=share)
    for epoch in range(epochs):
        for _batch in drv.batches(epoch):
            time.sleep(step_sleep)
    if driver_out is not None:
        driver_out.append(drv)
    return [s["epoch"] for s in drv.selections], drv


def test_a_costly_round_is_stretched_and_logged_never_below_every():
    # a round costs 0.4 s, an epoch trains ~0.01 s: at share 0.1 an interval of 400 epochs would be
    # needed, capped at the run's 6, so after the first selection there is no other
    epochs, drv = _run(SlowRandom(fraction=0.3, every=1, delay=0.4), share=0.1, step_sleep=0.01)
    assert epochs == [0]
    first = drv.stretches[0]
    assert first["epoch"] == 1 and first["interval"] == 6 and first["every"] == 1
    assert first["round_cost"] >= 0.4 and first["share"] > 1
    # off: the strategy's own schedule
    assert _run(SlowRandom(fraction=0.3, every=1, delay=0.4), share=0.0, step_sleep=0.01)[0] == list(range(6))


@pytest.mark.parametrize("share", [100.0, 0.001])
def test_the_guard_changes_nothing_when_selection_is_cheap(share):
    # a round under the share (100), or under GUARD_MIN_ROUND (a random draw at share 0.001): the
    # same selections and subsets as without a guard
    guarded, free = [], []
    _run(make("random", fraction=0.3, every=2), share=share, step_sleep=0.01, driver_out=guarded)
    _run(make("random", fraction=0.3, every=2), share=None, step_sleep=0.01, driver_out=free)
    assert [s["epoch"] for s in guarded[0].selections] == [0, 2, 4] == [s["epoch"] for s in free[0].selections]
    assert guarded[0].stretches == []
    assert torch.equal(guarded[0].sampler.selection.indices, free[0].sampler.selection.indices)


def test_the_interval_follows_the_measured_share():
    # every = 2, a round of ~1 s, subset epochs of one batch, ~0.2 s: at share 10 a round must
    # serve ceil(1 / 2) = 1 epoch, so every = 2 stands (and the last round, at 4, serves 2); at
    # share 0.25 it must serve 20 > 6 epochs: no round after the first
    assert _run(SlowRandom(fraction=0.3, every=2, delay=1.0), share=10.0, step_sleep=0.2)[0] == [0, 2, 4]
    epochs, drv = _run(SlowRandom(fraction=0.3, every=2, delay=1.0), share=0.25, step_sleep=0.2)
    assert epochs == [0] and drv.stretches[0]["interval"] == 6 and drv.stretches[0]["epoch"] == 2


def test_a_stretched_schedule_survives_a_checkpoint():
    strategy = SlowRandom(fraction=0.3, every=1, delay=0.4)
    _, drv = _run(strategy, share=0.1, epochs=3, step_sleep=0.01)
    state = drv.state_dict()
    data, y, classes = _data()
    again = Driver(SlowRandom(fraction=0.3, every=1, delay=0.4), nn.Linear(6, classes), data, y,
                   num_classes=classes, epochs=3, batch_size=40, max_selection_share=0.1)
    again.load_state_dict(state)
    assert again.stretches == drv.stretches and not again.strategy.selects_at(2)
    assert again.strategy._stretched == drv.strategy._stretched


def test_strategies_that_cannot_be_stretched_say_so():
    assert make("gradmatch", fraction=0.3, every=2, cache="/tmp/x.ddcache").reselects_every() is None
    assert make("gradmatch", fraction=0.3, every=2).reselects_every() == 2
    assert make("el2n", fraction=0.3).reselects_every() is None  # one-shot
    assert make("infobatch").reselects_every() is None
    warm = make("random", fraction=0.3, every=1, warm=0.5)
    _run(warm, share=None, epochs=20)
    assert warm.warm_epochs == 3 and warm.stretch(5, 0) is False  # epoch 0 was a warm start, no round
    with pytest.raises(ValueError, match="must be >= every = 3"):
        _run(make("random", fraction=0.3, every=3), share=None)[1].strategy.stretch(2, 0)


@pytest.mark.parametrize("share, what", [(-0.1, "must be a number >= 0"), (float("nan"), "must be a finite number"),
                                         ("0.1", "must be a finite number"), (True, "must be a finite number")])
def test_a_bad_share_is_refused(share, what):
    data, y, classes = _data()
    with pytest.raises(ValueError, match=f"Driver: max_selection_share = {share!r}: must be a number >= 0"):
        Driver(make("random", fraction=0.3, every=1), nn.Linear(6, classes), data, y, num_classes=classes,
               epochs=2, max_selection_share=share)
    with pytest.raises(ValueError, match=f"config max_selection_share = {share!r}: {what}"):
        TrainConfig(max_selection_share=share).validate()


def test_a_round_too_late_to_pay_for_itself_is_not_made():
    # rounds of ~0.5 s, epochs of ~0.3 s, share 0.5: a round must serve N = ceil(0.5 / 0.15) = 4
    # epochs, so every = 2 becomes 4; of the 10 epochs the round at 4 serves 6, but one at 8
    # would serve 2 < N: it is not made (the last stretch is to the run's end)
    epochs, drv = _run(SlowRandom(fraction=0.3, every=2, delay=0.5), share=0.5, epochs=10, step_sleep=0.3)
    interval = drv.stretches[0]["interval"]
    assert 3 <= interval <= 4 and epochs == list(range(0, 10 - interval, interval)), (epochs, drv.stretches)
    assert drv.stretches[-1]["interval"] == 10 and epochs[-1] + interval < 10  # the interval alone had one more


# -- candidate pools -----------------------------------------------------------------------------
class _Counting(Driver):
    """A Driver that counts the training samples each scoring pass reads."""

    scored: list

    def score(self, split="train", model=None, rows=None, **wanted):
        if split == "train":
            self.scored.append(len(self.score_set) if rows is None else len(rows))
        return super().score(split, model, rows, **wanted)


@pytest.mark.parametrize("name, params", [("gradmatch", {}), ("el2n", {"pretrain_epochs": 0}), ("glister", {}),
                                          ("gradmatch", {"mode": "global", "embedding": "full"})])
def test_a_pool_scores_pool_times_budget_candidates_seeded_per_round(name, params):
    data, y, classes = _data(n=300)
    val = TensorDataset(data.tensors[0][:40], y[:40]) if name == "glister" else None

    def run(pool, seed=0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, classes))
        drv = _Counting(make(name, fraction=0.1, every=1, pool=pool, **params), model, data, y, num_classes=classes,
                        epochs=3, batch_size=50, val_set=val, seed=seed)
        drv.scored, picks = [], []
        for epoch in range(3):
            drv.begin_epoch(epoch)
            picks.append(drv.sampler.selection.indices.clone())
        return drv, picks

    drv, picks = run(2.5)
    per_class = name != "glister" and params.get("mode") != "global"
    if per_class:  # ceil(2.5 x k_c) of each class
        from datadiet.select._budget import class_budgets

        counts = torch.bincount(y, minlength=classes).tolist()
        size = sum(min(n, math.ceil(2.5 * k)) for n, k in zip(counts, class_budgets(counts, 30)))
    else:
        size = 75  # ceil(2.5 x 30)
    assert drv.scored == [size] * 3 and size < 100  # per round, not 300
    assert [s["candidates"] for s in drv.selections] == [size] * 3
    again = run(2.5)[1]
    assert all(torch.equal(a, b) for a, b in zip(picks, again))  # seeded
    assert not torch.equal(picks[0], picks[1])  # each round its own candidates
    other = run(2.5, seed=1)[1]
    assert not torch.equal(picks[0], other[0])
    whole, _ = run(None)
    assert whole.scored == [300, 300, 300]
    assert run(10.0)[0].scored == [300, 300, 300]  # a pool covering the data is the whole pool


def test_pools_candidates_are_drawn_alike_on_every_rank_and_within_the_data():
    data, y, classes = _data(n=300)

    def drawn(name, per_class, **params):  # a fresh strategy and Driver: what another process computes
        strategy = make(name, fraction=0.1, every=1, pool=3, **params)
        Driver(strategy, nn.Linear(6, classes), data, y, num_classes=classes, epochs=2, val_set=data)
        return strategy.candidates(strategy.pool, 1, per_class=per_class)

    rows = drawn("gradmatch", False, mode="global", embedding="full")
    assert rows.numel() == 90 and rows.unique().numel() == 90 and int(rows.max()) < 300
    assert torch.equal(rows, torch.sort(rows).values)
    assert torch.equal(rows, drawn("glister", False))  # (seed, round) alone decide the draw
    # per class: ceil(3 x k_c) of each class c, so no class is left without candidates
    by_class = drawn("gradmatch", True)
    counts = torch.bincount(y, minlength=classes)
    from datadiet.select._budget import class_budgets

    want = [min(int(n), 3 * k) for n, k in zip(counts, class_budgets(counts.tolist(), 30))]
    assert torch.bincount(y[by_class], minlength=classes).tolist() == want
    assert torch.equal(by_class, drawn("el2n", True, pretrain_epochs=0))


def test_a_rare_class_keeps_its_candidates_under_a_pool():
    # 3 samples of class 2 among 300: a uniform draw of 30 would often miss it and the per-class
    # problem would have no rows; the per-class draw keeps it
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(300, dtype=torch.int64)
    y[150:297], y[297:] = 1, 2
    strategy = make("gradmatch", fraction=0.05, every=1, pool=2)
    drv = Driver(strategy, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), TensorDataset(x, y), y,
                 num_classes=3, epochs=3, batch_size=50)
    for epoch in range(3):
        drv.begin_epoch(epoch)
        chosen = drv.sampler.selection.indices
        assert (chosen >= 297).any(), epoch  # class 2 has a pick every round


@pytest.mark.parametrize("name, params, match", [
    ("gradmatch", {"pool": 0.5}, "pool = 0.5: must be a number >= 1"),
    ("glister", {"pool": "big"}, "pool = 'big': must be"),
    ("loss", {"pool": 2, "source": "training"}, "pool = 2 draws candidates"),
    ("gradmatch", {"pool": 2, "mode": "per_batch"}, "pool = 2: must be None with mode='per_batch'"),
])
def test_bad_pools_are_refused_before_training(name, params, match):
    data, y, classes = _data()
    with pytest.raises(ValueError, match=match):
        strategy = make(name, fraction=0.3, every=1, **params)
        Driver(strategy, nn.Linear(6, classes), data, y, num_classes=classes, epochs=3)


def test_strata_and_one_shot_proxies_take_no_pool():
    with pytest.raises(ValueError, match="'strata' has no parameter 'pool'"):
        make("strata", stratum=0, pool=2)
    data, y, classes = _data()
    with pytest.raises(ValueError, match="pool = 2 draws candidates"):
        Driver(make("el2n", fraction=0.3, pool=2), nn.Linear(6, classes), data, y, num_classes=classes, epochs=3,
               proxy_scores=lambda epochs, init, **kw: None)


# -- reduced-size scoring in train ---------------------------------------------------------------
@requires_torchvision
def test_train_scores_an_image_folder_at_score_image_size(tmp_path):
    from datadiet.train.trainer import Trainer

    root = image_folder(str(tmp_path / "img"), classes=2, per_class=8, size=24)
    config = TrainConfig(dataset=f"imagefolder:{root}", model="cnn", image_size=16, score_image_size=8, epochs=2,
                         batch_size=4, val_fraction=0.25, strategy="gradmatch", fraction=0.5, every=1,
                         strategy_params={"target": "val"}, progress=False, device="cpu").validate()
    trainer = Trainer(config)
    assert trainer.driver.score_set[0][0].shape[-2:] == (8, 8)  # the scoring view
    assert trainer.driver.val_set[0][0].shape[-2:] == (8, 8)  # the held-out split seen alike
    assert trainer.driver.train_set[0][0].shape[-2:] == (16, 16)  # training keeps its size
    summary = trainer.fit()
    assert [s["epoch"] for s in summary["selections"]] == [0, 1]
    assert config.identity()["score_image_size"] == 8
    assert "score_image_size" not in TrainConfig().validate().identity()  # unset: identities as before
    with pytest.raises(ValueError, match="config score_image_size = 8: applies to imagefolder: datasets"):
        TrainConfig(score_image_size=8).validate()
    with pytest.raises(ValueError, match=r"config score_image_size = 0: must be an int in \[1, 4096\]"):
        TrainConfig(dataset=f"imagefolder:{root}", score_image_size=0).validate()


def test_the_trainer_logs_each_stretch_in_its_metrics_and_a_resume_keeps_it(tmp_path, monkeypatch):
    """The Trainer's default guard (0.1): a slow round is stretched, the decision is in
    metrics.jsonl and summary.json, and a run resumed from an epoch-end checkpoint takes the same
    schedule (the round's cost and the training time since are in the checkpoint)."""
    import json
    import os
    import shutil

    from datadiet.train import trainer as trainer_module
    from datadiet.train.trainer import Trainer

    copies, real_save = [], trainer_module.checkpoint.save

    def spy(path, state, config):
        real_save(path, state, config)
        copies.append(str(tmp_path / f"ckpt{len(copies)}.pt"))
        shutil.copy(path, copies[-1])

    monkeypatch.setattr(trainer_module.checkpoint, "save", spy)
    base = dict(strategy="random", fraction=0.3, every=1, epochs=4, batch_size=256, progress=False, device="cpu")
    whole = str(tmp_path / "whole")
    summary = Trainer(TrainConfig(out=whole, **base), SlowRandom(fraction=0.3, every=1, delay=0.5)).fit()
    monkeypatch.setattr(trainer_module.checkpoint, "save", real_save)
    assert [s["epoch"] for s in summary["selections"]] == [0]
    (stretch,) = summary["stretches"]
    assert stretch["epoch"] == 1 and stretch["interval"] == 4
    lines = [json.loads(line) for line in open(os.path.join(whole, "metrics.jsonl"))]
    assert "stretches" not in lines[0] and lines[1]["stretches"] == [stretch]
    assert [s["epoch"] for s in lines[0]["selections"]] == [0] and lines[1]["selections"] == []
    run = str(tmp_path / "resumed")  # from the checkpoint after epoch 1, when the stretch was decided
    os.makedirs(run)
    shutil.copy(os.path.join(whole, "config.json"), run)
    shutil.copy(copies[1], os.path.join(run, "checkpoint.pt"))
    again = Trainer(TrainConfig(resume=run, **base), SlowRandom(fraction=0.3, every=1, delay=0.5)).fit()
    assert [s["epoch"] for s in again["selections"]] == [0] and again["stretches"] == summary["stretches"]


def test_options_no_selection_job_or_fixed_input_model_can_use_are_refused(tmp_path, capsys):
    from datadiet.cli import main

    root = str(tmp_path / "img")
    with pytest.raises(ValueError, match="config score_image_size = 8: needs a model that takes any image size"):
        TrainConfig(dataset=f"imagefolder:{root}", model="mlp", score_image_size=8).validate()
    assert main(["select", "--strategy", "el2n", "--fraction", "0.3", "--param", "pool=2", "--proxy-epochs", "1",
                 "--out", str(tmp_path / "sel"), "--no-progress"]) == 2
    assert "select: pool = 2 is not used here (a selection job scores the whole pool once)" in capsys.readouterr().err
    assert not (tmp_path / "sel").exists()


def test_a_compare_grid_refuses_a_pool_its_one_shot_cell_cannot_use_before_training():
    from datadiet.train import compare

    with pytest.raises(ValueError, match="el2n: pool = 2 draws candidates for a scoring pass"):
        compare.plan(TrainConfig(strategy_params={"pool": 2}), ["full", "el2n"], [0.3], [0])
    assert compare.plan(TrainConfig(strategy_params={"pool": 2, "every": 2}), ["full", "el2n"], [0.3], [0])


def test_a_run_from_before_the_guard_resumes_without_it(tmp_path):
    """config.json of a run written before max_selection_share existed: the guard stays off, as
    it was, and the identity (which leaves 0 out) matches that run's checkpoint."""
    import json

    from datadiet.train.options import _saved_config

    saved = TrainConfig(strategy="random", fraction=0.3, every=1).validate()
    old = {k: v for k, v in dataclasses.asdict(saved).items() if k != "max_selection_share"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = TrainConfig(**_saved_config(str(tmp_path), {})).validate()
    assert config.max_selection_share == 0.0 and "max_selection_share" not in config.identity()
    assert TrainConfig().validate().identity()["max_selection_share"] == 0.1  # new runs: on, and recorded
