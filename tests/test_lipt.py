"""Seed 001's LiPT: workers' data disjoint and of the configured size, densities in range and
seeded, valid jigsaw permutations and tiles, per-image seeded RandAugment, the merge's greedy
acceptance on planted held-out scores, the first selection scored by the merged model, faulty
workers (raising, NaN, past the timeout) left out and named, none left a clear failure, and a
3-rank gloo run equal to the in-process merge."""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

from datadiet.cli import main as cli
from datadiet.pipelines import LiptOptions, NoWorkerLeft, jigsaw, lipt
from datadiet.pipelines import lightweight_pretraining as module
from datadiet.strategies import make
from datadiet.strategies.pretrained import FromModel
from datadiet.train import datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.driver import Driver
from tests.subprocesses import REPO, TORCHRUN, env
from tests.test_trainer import requires_torchvision

TINY = dict(n_workers=3, worker_steps=2, worker_batch_size=16, permutations=12)


def _config(**kw):
    return TrainConfig(**{**dict(strategy="grand", fraction=0.2, epochs=2, batch_size=32, progress=False), **kw})


def test_worker_subsets_are_disjoint_and_sized():
    parts = module.worker_subsets(1000, 5, 3, 20, seed=4)
    assert parts.shape == (5, 3, 20)
    assert parts.flatten().unique().numel() == 300 and int(parts.max()) < 1000
    assert torch.equal(parts, module.worker_subsets(1000, 5, 3, 20, seed=4))
    assert not torch.equal(parts, module.worker_subsets(1000, 5, 3, 20, seed=5))
    with pytest.raises(ValueError, match="more than the pool's 100"):
        module.worker_subsets(100, 5, 3, 20, seed=0)


@pytest.mark.parametrize("grid, count", [(2, 24), (2, 10), (3, 30)])
def test_permutation_sets_are_valid_and_seeded(grid, count):
    perms = jigsaw.permutation_set(grid, count, seed=1)
    assert perms.shape == (min(count, 24 if grid == 2 else count), grid * grid)
    assert torch.equal(perms.sort(1).values, torch.arange(grid * grid).expand_as(perms))
    assert torch.unique(perms, dim=0).shape[0] == perms.shape[0]
    assert torch.equal(perms, jigsaw.permutation_set(grid, count, seed=1))
    if grid == 3:  # maximal Hamming distance: no two of 30 orders of 9 tiles are close
        d = (perms[:, None] != perms[None]).sum(-1) + 100 * torch.eye(len(perms), dtype=torch.long)
        assert int(d.min()) >= 6


def test_permutation_set_errors():
    with pytest.raises(ValueError, match="grid must be an int >= 2"):
        jigsaw.permutation_set(1, 4)
    with pytest.raises(ValueError, match="permutations must be an int >= 2"):
        jigsaw.permutation_set(2, 1)


@pytest.mark.parametrize("h, w, grid", [(8, 8, 2), (9, 7, 3), (12, 12, 3)])
def test_shuffle_tiles_matches_a_loop(h, w, grid):
    x = torch.randn(3, 2, h, w)
    perms = torch.stack([torch.randperm(grid * grid) for _ in range(3)])
    got = jigsaw.shuffle_tiles(x, perms)
    th, tw = h // grid, w // grid
    expected = x.clone()
    for b, j in itertools.product(range(3), range(grid * grid)):
        src = int(perms[b, j])
        r, c, sr, sc = j // grid, j % grid, src // grid, src % grid
        expected[b, :, r * th:(r + 1) * th, c * tw:(c + 1) * tw] = x[b, :, sr * th:(sr + 1) * th, sc * tw:(sc + 1) * tw]
    assert torch.equal(got, expected)
    inverse = perms.argsort(1)
    assert torch.equal(jigsaw.shuffle_tiles(got, inverse), x)


def test_jigsaw_batch_targets_index_the_set():
    perms = jigsaw.permutation_set(2, 24)
    x = torch.randn(6, 1, 8, 8)
    shuffled, ids = jigsaw.jigsaw(x, perms, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, jigsaw.shuffle_tiles(x, perms[ids]))
    with pytest.raises(ValueError, match="cannot be cut"):
        jigsaw.shuffle_tiles(torch.randn(1, 1, 2, 2), jigsaw.permutation_set(3, 4)[:1])


@requires_torchvision
def test_randaugment_is_per_image_and_seeded():
    x = torch.rand(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    a = jigsaw.randaugment(x, num_ops=2, magnitude=9, seed=3)
    assert torch.equal(a, jigsaw.randaugment(x, num_ops=2, magnitude=9, seed=3))
    assert not torch.equal(a, jigsaw.randaugment(x, num_ops=2, magnitude=9, seed=4))
    distinct = torch.unique(a.flatten(1), dim=0).shape[0]
    assert distinct > 8  # one call per image: identical inputs come out differently
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    kept = jigsaw.randaugment(normed, num_ops=0, magnitude=9, seed=0, normalization=(mean, std))
    assert torch.allclose(kept, normed, atol=1 / 255 / 0.2)  # only uint8 quantisation: the round trip holds


def test_with_head_replaces_only_the_classifier():
    model = models.build("mlp", 10, (1, 8, 8))
    path = jigsaw.head_path(model)
    swapped = jigsaw.with_head(model, path, 24, seed=0)
    assert swapped.get_submodule(path).out_features == 24 and model.get_submodule(path).out_features == 10
    again = jigsaw.with_head(model, path, 24, seed=0)
    assert torch.equal(swapped.get_submodule(path).weight, again.get_submodule(path).weight)
    assert torch.equal(swapped[1].weight, model[1].weight)


def test_options_are_validated():
    for bad, match in ((dict(n_workers=0), "n_workers must be an int >= 1"), (dict(task="x"), "task must be one of"),
                       (dict(density=(0.9, 0.8)), "density must be"), (dict(alphas=(0.0,)), "alphas must be"),
                       (dict(scorer_head="keep"), "only task='supervised'"),
                       (dict(worker_timeout=0), "worker_timeout")):
        with pytest.raises(ValueError, match=match):
            LiptOptions(**bad).validate()
    with pytest.raises(ValueError, match="val_fraction"):
        lipt(_config(val_fraction=0.0), LiptOptions(**TINY, augment_ops=0))
    with pytest.raises(ValueError, match="pretrain_epochs / repeats"):
        lipt(_config(strategy_params={"repeats": 3}), LiptOptions(**TINY, augment_ops=0))


def test_from_model_scores_the_given_model_first():
    bundle = datasets.load("digits")
    torch.manual_seed(0)
    trained, fresh = models.build("mlp", 10, (1, 8, 8)), models.build("mlp", 10, (1, 8, 8))

    def first_selection(strategy, model):
        drv = Driver(strategy, model, bundle.train, bundle.labels, num_classes=10, epochs=3)
        drv.begin_epoch(0)
        return drv.sampler.selection.indices, drv.selections[-1]

    direct, _ = first_selection(make("grand", fraction=0.1, pretrain_epochs=0), trained)
    via, log = first_selection(FromModel(make("grand", fraction=0.1, pretrain_epochs=0), trained), fresh)
    own, _ = first_selection(make("grand", fraction=0.1, pretrain_epochs=0), fresh)
    assert torch.equal(via, direct) and not torch.equal(via, own)
    assert log["scored_by"] == "pretrained"


def _spy_workers(monkeypatch):
    seen = {}
    real = module._train_worker

    def spy(job, w, theta, indices):
        seen[w] = indices.clone()
        return real(job, w, theta, indices)
    monkeypatch.setattr(module, "_train_worker", spy)
    return seen


@requires_torchvision
def test_lipt_runs_end_to_end(tmp_path, monkeypatch):
    seen = _spy_workers(monkeypatch)
    out = lipt(_config(out=str(tmp_path)), LiptOptions(**TINY), log=lambda *a: None)
    assert sorted(seen) == [0, 1, 2] and all(v.shape == (1, 16) for v in seen.values())
    assert torch.cat(list(seen.values()), 1).unique().numel() == 48
    assert out["shipped"] == 48 and out["permutations"] == 12 and out["grid"] == 2
    lo, hi = LiptOptions().density
    densities = [w["density"] for w in out["workers"]]
    assert all(lo <= d <= hi for d in densities) and len(set(densities)) == 3
    assert densities == module.prune.worker_densities(3, lo, hi, seed=module.derive_seed(0, 34))
    assert densities != module.prune.worker_densities(3, lo, hi, seed=module.derive_seed(1, 34))
    assert out["merge"]["accepted"] and not out["merge"]["left_out"]
    assert out["selections"][0]["scored_by"] == "pretrained"
    t = out["time"]  # Table 1's parts add up
    assert t["pretraining"] >= t["setup_and_workers"] + t["merge"] + t["head"] > 0
    assert t["total"] >= t["pretraining"] + t["selection"] + t["main_training"] + t["evaluation"]
    assert json.load(open(tmp_path / "lipt.json"))["test_acc"] == out["test_acc"]


def dropout_mlp(num_classes: int, input_shape: tuple) -> torch.nn.Module:
    """A model that draws from the global RNG while training (``--model tests.test_lipt:dropout_mlp``)."""
    n = int(torch.tensor(input_shape).prod())
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, num_classes))


def test_workers_draw_their_own_dropout_whatever_the_global_rng():
    runs = []
    for outside in (1, 2):
        torch.manual_seed(outside)
        out = lipt(_config(model="tests.test_lipt:dropout_mlp"), LiptOptions(**TINY, augment_ops=0),
                   log=lambda *a: None)
        runs.append(([w["losses"] for w in out["workers"]], out["merge"]))
    assert runs[0] == runs[1]
    assert len({tuple(w) for w in runs[0][0]}) == 3  # every worker its own draws


def test_pruned_workers_keep_the_drawn_density(monkeypatch):
    kept = {}
    real = module._train_worker

    def spy(job, w, theta, indices):
        state, losses = real(job, w, theta, indices)
        model = models.build("mlp", 10, (1, 8, 8))
        model = jigsaw.with_head(model, "5", 12, seed=0)
        model.load_state_dict(state)
        kept[w] = (1 - module.prune.sparsity(model), job.densities[w])
        return state, losses
    monkeypatch.setattr(module, "_train_worker", spy)
    lipt(_config(), LiptOptions(**TINY, augment_ops=0), log=lambda *a: None)
    total = sum(p.numel() for p in module.prune.prunable(jigsaw.with_head(models.build("mlp", 10, (1, 8, 8)), "5",
                                                                                     12, seed=0)).values())
    for got, want in kept.values():
        assert abs(got - want) <= 1.5 / total


def test_greedy_merge_accepts_on_planted_scores(monkeypatch):
    values = {0: 1.0, 1: 2.0, 2: 9.0}  # each worker's weights all equal to one value; the judge wants 1.45

    def planted(job, w, theta, indices):
        return {k: torch.full_like(v, values[w]) if v.dtype.is_floating_point else v
                for k, v in theta.state_dict().items()}, []
    monkeypatch.setattr(module, "_train_worker", planted)
    monkeypatch.setattr(module._Job, "heldout_score",
                        lambda self, held: lambda m: -abs(float(next(m.parameters()).detach().flatten()[0]) - 1.45))
    greedy = lipt(_config(), LiptOptions(**TINY, augment_ops=0), log=lambda *a: None)["merge"]
    assert greedy["accepted"] == [0, 1] and greedy["score"] == pytest.approx(-0.05)
    assert [h["accepted"] for h in greedy["history"]] == [True, False]
    assert greedy["history"][0]["alpha"] == pytest.approx(0.4)
    uniform = lipt(_config(), LiptOptions(**TINY, augment_ops=0, merge="uniform"), log=lambda *a: None)["merge"]
    assert uniform["accepted"] == [0, 1, 2] and uniform["score"] == pytest.approx(-abs(4.0 - 1.45))


def test_faulty_workers_are_left_out_and_named(monkeypatch):
    from tests import lipt_faults

    monkeypatch.setattr(module, "_train_worker", lipt_faults.faulty)
    with pytest.warns(UserWarning) as caught:
        out = lipt(_config(), LiptOptions(**{**TINY, "n_workers": 4}, augment_ops=0), log=lambda *a: None)
    text = " ".join(str(w.message) for w in caught)
    assert "worker 1 (rank 0) left out of the soup: failed (RuntimeError: injected fault" in text
    assert "worker 2 (rank 0) left out of the soup: non-finite" in text
    assert out["merge"]["left_out"] == [1, 2] and set(out["merge"]["accepted"]) <= {0, 3}
    assert [w["status"] for w in out["workers"]] == ["ok", "failed", "non-finite", "ok"]


def test_no_worker_left_fails_clearly(monkeypatch, capsys, tmp_path):
    with pytest.raises(NoWorkerLeft, match="worker 0: timeout"):
        lipt(_config(), LiptOptions(**TINY, augment_ops=0, worker_timeout=1e-9), log=lambda *a: None)

    def broken(job, w, theta, indices):
        raise RuntimeError(f"worker {w} broke")
    monkeypatch.setattr(module, "_train_worker", broken)
    code = cli(["lipt", "--epochs", "2", "--n-workers", "2", "--worker-steps", "1", "--augment-ops", "0",
                "--out", str(tmp_path)])
    assert code == 1
    assert "every worker failed" in capsys.readouterr().err


@requires_torchvision
def test_three_gloo_ranks_merge_like_one_process(tmp_path):
    done = subprocess.run([*TORCHRUN[:-1], "3", os.path.join(REPO, "tests", "lipt_faults.py"), str(tmp_path / "d")],
                          env=env(), timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "worker 1 (rank 1) left out of the soup: failed" in done.stderr
    assert "worker 2 (rank 2) left out of the soup: non-finite" in done.stderr
    dist = json.load(open(tmp_path / "d" / "lipt.json"))
    assert dist["world_size"] == 3 and [w["rank"] for w in dist["workers"]] == [0, 1, 2, 0]
    single = subprocess.run([sys.executable, os.path.join(REPO, "tests", "lipt_faults.py"), str(tmp_path / "s")],
                            env=env(), timeout=300, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.load(open(tmp_path / "s" / "lipt.json"))
    assert dist["merge"] == one["merge"]  # workers depend on their id only, not on the rank they ran on


@requires_torchvision
def test_cli_prints_the_time_breakdown(tmp_path, capsys):
    assert cli(["lipt", "--epochs", "2", "--n-workers", "2", "--worker-steps", "2", "--worker-batch-size", "16",
                "--against-usual", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "grand (own pre-training)" in text and "pre-training ratio" in text


@requires_torchvision
def test_reproduction_runs_at_tiny_scale(tmp_path):
    assert cli(["reproduce", "lipt-grand", "--fractions", "0.2", "--seeds", "0,1", "--epochs", "2",
                "--n-workers", "2", "--worker-steps", "1", "--worker-batch-size", "16", "--out", str(tmp_path)]) == 0
    rows = json.load(open(tmp_path / "lipt-grand.json"))["rows"]
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    for key in ("lipt", "lipt_uniform", "grand", "random"):
        assert 0.0 <= rows[0][f"{key}_mean"] <= 1.0
    assert rows[0]["pretraining_ratio"] > 0 and (tmp_path / "lipt-grand.png").is_file()
