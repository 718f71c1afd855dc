"""The reference loop end to end: every strategy trains through the Trainer on the embedded
dataset; ImageFolder and CIFAR-format folders built on the fly train a CNN; the weighted loss is
the formula; bad configurations fail with the key or path named; checkpoints of another
configuration are refused; the comparison writes its table, CSV, JSON and plot."""

import json
import os

import pytest
import torch
from torch import nn

from datadiet import strategies
from datadiet.cli import main as cli
from datadiet.train import checkpoint
from datadiet.select import Selection
from datadiet.train.config import TrainConfig
from datadiet.train.datasets import load
from datadiet.train.driver import Driver
from datadiet.train.trainer import Trainer
from tests.train_fixtures import cifar10, image_folder, requires_torchvision

TINY = dict(epochs=3, batch_size=64, progress=False)


def _params(name):
    return {"forgetting": {"warm": 0.99}, "gradmatch": {"every": 1}, "glister": {"every": 2},
            "random_online": {"every": 1}, "selective_backprop": {"start": 0.0}, "random_pb": {"batch_size": 8},
            "cached_gradmatch": {"every": 1}, "strata": {"stratum": 0}}.get(name, {})


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_every_strategy_trains_end_to_end(name, tmp_path):
    fraction = 0.3 if "fraction" in strategies.parameters(name) else None
    epochs = 4 if name == "forgetting" else 3  # two full-data epochs of counts first (warm 0.99 → ceil(0.99·4·0.3))
    if name == "cached_gradmatch":  # replays the rounds a gradmatch run of the same setting recorded
        cache = str(tmp_path / "gm.cache")
        Trainer(TrainConfig(strategy="gradmatch", fraction=fraction, strategy_params={"every": 1, "cache": cache},
                            **{**TINY, "epochs": epochs})).fit()
        params = {**_params(name), "cache": cache}
    else:
        params = _params(name)
    config = TrainConfig(strategy=name, fraction=fraction, strategy_params=params, out=str(tmp_path),
                         **{**TINY, "epochs": epochs})
    trainer = Trainer(config)
    summary = trainer.fit()
    assert summary["epochs"] == epochs and 0.0 <= summary["test_acc"] <= 1.0
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in lines] == list(range(epochs))
    assert set(lines[0]["time"]) == {"pretraining", "selection", "scoring", "training", "evaluation"}
    if fraction is not None:
        n = trainer.driver.sampler.n
        assert min(r["subset_size"] for r in lines) <= -(-3 * n // 10) + 10  # the budget (+1 per class at most)
    assert [s["epoch"] for s in summary["selections"]] == SELECTION_EPOCHS[name]
    assert json.load(open(tmp_path / "summary.json"))["steps"] == summary["steps"]
    # the lr schedule, sized from the strategy's plan and re-sized per selection, ends on the last step
    assert trainer.scheduler.last_epoch == trainer.scheduler.total_steps == summary["steps"]


SELECTION_EPOCHS = {"full": [0], "random": [0], "random_online": [0, 1, 2], "loss": [0], "el2n": [0], "grand": [0],
                    "least_confidence": [0], "margin": [0], "entropy": [0], "strata": [0], "forgetting": [0, 2],
                    "gradmatch": [0, 1, 2], "glister": [0, 2], "selective_backprop": [0], "random_pb": [0],
                    "cached_gradmatch": [0, 1, 2], "infobatch": [0, 1, 2], "adaselection": [0]}


def test_schedule_follows_the_planned_subset_steps():
    trainer = Trainer(TrainConfig(strategy="random", fraction=0.25, schedule="cosine", **TINY))
    per_epoch = -(-trainer.driver.strategy.budget // 64)
    assert trainer.scheduler.total_steps == 3 * per_epoch
    trainer.fit()
    assert trainer.step == trainer.scheduler.total_steps
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end


def test_selection_weights_reach_the_batches():
    model = nn.Linear(64, 10)
    bundle = load("digits")
    driver = Driver(strategies.make("full"), nn.Sequential(nn.Flatten(), model), bundle.train, bundle.labels,
                    num_classes=10, epochs=1, batch_size=50)
    idx = torch.arange(0, 300, 3)
    w = torch.linspace(0.5, 2.0, idx.numel())
    driver.set_selection(Selection(idx, w))
    table = dict(zip(idx.tolist(), w.tolist()))
    got = {}
    for _x, _y, i, weights in driver.batches():
        got.update(zip(i.tolist(), weights.tolist()))
    assert got == pytest.approx(table)


def test_weighted_loss_is_the_formula():
    model = nn.Linear(3, 2)
    x = torch.randn(10, 3)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(10, dtype=torch.long))
    driver = Driver(strategies.make("full"), model, ds, torch.zeros(10, dtype=torch.long), num_classes=2, epochs=1)
    losses, w, i = torch.rand(5), torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25]), torch.arange(5)
    assert torch.allclose(driver.loss(losses, i, w), (w * losses).sum() / w.sum())


@requires_torchvision
def test_image_folder_and_cifar_folders_train(tmp_path):
    folder = image_folder(tmp_path / "imnet")
    s = Trainer(TrainConfig(dataset=f"imagefolder:{folder}", model="cnn", image_size=16, strategy="el2n",
                            fraction=0.5, val_fraction=0.0, batch_size=4, epochs=2, progress=False)).fit()
    assert s["epochs"] == 2
    root = cifar10(tmp_path / "cifar")
    trainer = Trainer(TrainConfig(dataset=f"cifar10:{root}", model="cnn", strategy="gradmatch", fraction=0.5,
                                  batch_size=16, epochs=1, progress=False))
    assert len(trainer.test_set) == 20 and trainer.num_classes == 10
    trainer.fit()


@requires_torchvision
def test_torchvision_model_by_name(tmp_path):
    folder = image_folder(tmp_path / "imnet")
    trainer = Trainer(TrainConfig(dataset=f"imagefolder:{folder}", model="resnet18", image_size=32, strategy="grand",
                                  fraction=0.5, epochs=1, batch_size=3, val_fraction=0.0, progress=False,
                                  channels_last=True, strategy_params={"pretrain_epochs": 0}))
    assert trainer.driver.head is trainer.model.fc
    assert trainer.fit()["selections"][0]["size"] == 9


@pytest.mark.parametrize("config, message", [
    (dict(strategy="nope"), "unknown strategy 'nope'"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(dataset="imagefolder:/does/not/exist"), "folder '/does/not/exist' does not exist"),
    (dict(dataset="cifar10:/does/not/exist"), "does not exist"),
    (dict(strategy="random", fraction=1.5), r"config fraction = 1.5: must be in \(0, 1\]"),
    (dict(strategy="random", fraction=0.0), r"fraction = 0.0: must be in \(0, 1\]"),
    (dict(strategy="random_online", fraction=0.5, every=0), "config every = 0: must be an int >= 1"),
    (dict(model="nope"), "unknown model 'nope'"),
    pytest.param(dict(model="resnet18"), "expect 3-channel images; the dataset has 1", marks=requires_torchvision),
    (dict(optimizer="lbfgs"), "config optimizer = 'lbfgs'"),
    (dict(amp="fp16", device="cpu"), "float16 autocast needs a CUDA device"),
    (dict(strategy="gradmatch", fraction=0.3, model="tests.test_trainer:no_linear"), "has no nn.Linear layer"),
])
def test_bad_configurations_fail_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        Trainer(TrainConfig(**config, progress=False))


def no_linear(num_classes, input_shape):
    return nn.Sequential(nn.Conv2d(1, num_classes, 8), nn.Flatten())


def test_cli_errors_name_the_problem(capsys):
    assert cli(["train", "--strategy", "nope"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert cli(["train", "--param", "colour=1", "--strategy", "random", "--fraction", "0.5"]) == 2
    assert "has no parameter 'colour'" in capsys.readouterr().err
    assert cli(["train", "--resume", "/does/not/exist"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_options_a_strategy_does_not_take_are_refused(capsys):
    assert cli(["train", "--strategy", "selective_backprop", "--fraction", "0.3"]) == 2
    assert "fraction = 0.3: strategy 'selective_backprop' takes no fraction" in capsys.readouterr().err
    assert cli(["train", "--strategy", "random", "--fraction", "0.3", "--param", "fraction=0.2"]) == 2
    assert "fraction is given twice" in capsys.readouterr().err
    assert cli(["compare", "--param", "fraction=0.2"]) == 2
    assert "set by --fractions" in capsys.readouterr().err


def test_user_loops_get_clear_errors_for_what_they_must_supply():
    bundle = load("digits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="gives no proxy_scores: pass pretrain_epochs=0"):
        Driver(strategies.make("el2n", fraction=0.3), model, bundle.train, bundle.labels, num_classes=10, epochs=5)
    driver = Driver(strategies.make("forgetting", fraction=0.3), model, bundle.train, bundle.labels, num_classes=10,
                    epochs=5)
    x, y, i, w = next(driver.batches(0))
    with pytest.raises(ValueError, match="pass correct="):
        driver.loss(torch.nn.functional.cross_entropy(model(x), y, reduction="none"), i, w)


def test_resume_of_another_configuration_is_refused(tmp_path):
    Trainer(TrainConfig(strategy="random", fraction=0.5, epochs=1, out=str(tmp_path), progress=False)).fit()
    other = TrainConfig(strategy="random", fraction=0.5, epochs=1, lr=0.2, resume=str(tmp_path), progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="lr: checkpoint 0.05, this run 0.2"):
        Trainer(other)


def test_toml_config_and_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('strategy = "gradmatch"\nfraction = 0.2\nepochs = 2\n[strategy_params]\nmode = "global"\n'
                    'embedding = "full"\n')
    out = tmp_path / "out"
    assert cli(["train", "--config", str(path), "--epochs", "1", "--out", str(out), "--param", "every=1",
                "--no-progress"]) == 0
    saved = json.load(open(out / "config.json"))
    assert saved["epochs"] == 1 and saved["strategy_params"] == {"mode": "global", "embedding": "full", "every": 1}
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    assert cli(["train", "--config", str(bad)]) == 2


def test_compare_writes_table_csv_json_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli(["compare", "--strategies", "full,random,selective_backprop", "--fractions", "0.2,0.5", "--seeds",
                "0,1", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "random" in text
    rows = json.load(open(out / "compare.json"))["rows"]
    assert [(r["strategy"], r["fraction"]) for r in rows] == [
        ("full", 1.0), ("random", 0.2), ("random", 0.5), ("selective_backprop", 1.0), ("full@0.2", 0.2),
        ("full@0.5", 0.5)]
    assert all(r["seeds"] == 2 for r in rows) and rows[0]["speedup_vs_full"] == pytest.approx(1.0)
    assert os.path.getsize(out / "compare.png") > 1000 and (out / "compare.csv").read_text().count("\n") == 7
    assert "acc @ base wall" in text and "full@0.5" in text
    by = {(r["strategy"], r["fraction"]): r for r in rows}
    assert by[("random", 0.5)]["baseline"] == "full@0.5" and by[("full", 1.0)]["baseline"] is None
    assert isinstance(by[("random", 0.5)]["beats_baseline"], bool)
    runs = json.load(open(out / "compare.json"))["runs"]
    assert {len(r["curve"]) for r in runs if r["strategy"] == "full@0.5"} == {1}  # round(0.5 · 2) epochs
    out2 = tmp_path / "plain"
    assert cli(["compare", "--strategies", "full,random", "--fractions", "0.5", "--seeds", "0", "--epochs", "2",
                "--out", str(out2), "--no-progress", "--no-budget-baselines"]) == 0
    assert [r["strategy"] for r in json.load(open(out2 / "compare.json"))["rows"]] == ["full", "random"]


def test_budget_baseline_takes_the_subsets_steps():
    """full with budget f trains round(f · epochs) epochs of all the data under a schedule over
    those epochs: the optimisation steps of a fraction-f subset over all the epochs."""
    subset = Trainer(TrainConfig(strategy="random", fraction=0.3, epochs=10, progress=False)).fit()
    baseline = Trainer(TrainConfig(strategy="full", strategy_params={"budget": 0.3}, epochs=10,
                                   progress=False))
    summary = baseline.fit()
    assert summary["epochs"] == 3 and baseline.scheduler.total_steps == summary["steps"]
    assert abs(summary["steps"] - subset["steps"]) <= 10  # per-epoch rounding of ceil(n / batch)
    assert strategies.make("full", budget=0.25).epochs_to_train(10) == 3  # round half up: 2.5 -> 3
    assert strategies.make("full", budget=0.29).epochs_to_train(50) == 15  # 14.5 in decimal, not 14.4999...
    assert strategies.make("full", budget=0.01).epochs_to_train(10) == 1  # at least one epoch
    with pytest.raises(ValueError, match="compare sets full's budget itself"):
        from datadiet.train.compare import split_params
        split_params({"full.budget": 0.5}, ["full", "random"])
    with pytest.raises(ValueError, match=r"budget = 0: must be in \(0, 1\]"):
        strategies.make("full", budget=0)


def test_time_to_target_and_accuracy_at_the_baselines_wall_on_hand_made_curves():
    from datadiet.train.compare import table

    def run(name, fraction, seed, curve, time=None):
        return {"strategy": name, "fraction": fraction, "seed": seed, "test_acc": curve[-1][1], "wall": curve[-1][0],
                "samples": 1, "time": time or {"selection": 0.0, "scoring": 0.0, "pretraining": 0.0},
                "curve": curve}
    runs = [run("full", 1.0, 0, [(1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]),
            run("full@0.3", 0.3, 0, [(1.0, 0.6)]),
            run("gm", 0.3, 0, [(0.5, 0.4), (1.5, 0.7), (2.5, 0.895)]),  # at 1.0 s: its epoch at 0.5 s, 0.4
            run("el2n", 0.3, 0, [(0.4, 0.62), (0.8, 0.7)]),  # at 1.0 s: its last, 0.7
            run("late", 0.3, 0, [(1.2, 0.99)])]  # first evaluated after the baseline finished
    rows = {r["strategy"]: r for r in table(runs, target_drop=0.01)}
    assert rows["full"]["time_to_target_s"] == 3.0 and rows["gm"]["time_to_target_s"] == 2.5
    assert rows["el2n"]["time_to_target_s"] is None and rows["late"]["time_to_target_s"] == 1.2
    assert rows["gm"]["acc_at_baseline_wall"] == pytest.approx(0.4)
    assert rows["gm"]["vs_baseline"] == pytest.approx(-0.2) and rows["gm"]["beats_baseline"] is False
    assert rows["el2n"]["acc_at_baseline_wall"] == pytest.approx(0.7) and rows["el2n"]["beats_baseline"] is True
    assert rows["late"]["acc_at_baseline_wall"] is None and rows["late"]["beats_baseline"] is False
    assert rows["late"]["late_start"] is True and rows["gm"]["late_start"] is False
    assert rows["full@0.3"]["baseline"] is None and rows["full"]["beats_baseline"] is None


def test_a_strategy_drives_a_users_own_loop():
    """The README's five lines, with a per-batch and an every-R strategy."""
    import torch.nn.functional as F

    from datadiet.strategies import make
    from datadiet.train import Driver

    bundle = load("digits")
    for strategy in (make("gradmatch", fraction=0.3, every=2), make("selective_backprop", start=0.0)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        driver = Driver(strategy, model, bundle.train, bundle.labels, num_classes=10, epochs=4)
        seen = []
        for epoch in range(4):
            for x, y, i, w in driver.batches(epoch):
                loss = driver.loss(F.cross_entropy(model(x), y, reduction="none"), i, w)
                opt.zero_grad(); loss.backward(); opt.step()  # noqa: E702
                seen.append(i.numel())
        if strategy.name == "gradmatch":
            assert [s["epoch"] for s in driver.selections] == [0, 2] and sum(seen) < 4 * len(bundle.train)
        else:
            assert sum(seen) < 4 * len(bundle.train)  # masks dropped samples before the backward pass


def test_bf16_autocast_channels_last_and_compile():
    cnn = Trainer(TrainConfig(model="cnn", amp="bf16", channels_last=True, strategy="gradmatch", fraction=0.3,
                              epochs=1, progress=False))
    assert cnn.fit()["test_acc"] is not None
    compiled = Trainer(TrainConfig(compile=True, strategy="selective_backprop", epochs=1, progress=False,
                                   strategy_params={"start": 0.0}))
    assert compiled.fit()["samples"] < len(compiled.train_set)
