"""torch.distributed with 2 gloo processes on CPU (torchrun): distributed scoring equals the
single-process table, 2 ranks select the same subset as 1 rank, a short DDP run trains, and a
DDP resume of another configuration is refused on every rank."""

import json
import math
import os
import subprocess
import sys

import torch

from datadiet.scores import score_dataset
from datadiet.train import checkpoint, datasets, models
from datadiet.train.data import IndexedDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


def _torchrun(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO) if p))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], env=env, timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_distributed_scoring_equals_single_process(tmp_path):
    out = str(tmp_path / "table.pt")
    _torchrun(os.path.join(REPO, "tests", "dist_score.py"), out)
    got = torch.load(out)
    bundle = datasets.load("digits")
    torch.manual_seed(0)
    model = models.build("mlp", 10, (1, 8, 8))
    expected = score_dataset(model, IndexedDataset(bundle.train), features=True, errors=True, batch_size=100)
    for name, value in vars(expected).items():
        if value is not None:
            assert torch.allclose(got[name].float(), value.float(), rtol=1e-5, atol=1e-6), name


def _train(out, *extra, ranks=2):
    args = ["-m", "datadiet", "train", "--strategy", "gradmatch", "--fraction", "0.3", "--epochs", "2", "--out",
            out, "--no-progress", "--dist-timeout", "120", *extra]
    if ranks == 1:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO) if p))
        subprocess.run([sys.executable, *args], env=env, check=True, timeout=TIMEOUT, capture_output=True)
        return ""
    return _torchrun(*args)


def test_two_ranks_select_what_one_rank_selects_and_train(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _train(one, ranks=1)
    printed = _train(two)
    a = checkpoint.load(os.path.join(one, "checkpoint.pt"))["driver"]["sampler"]
    b = checkpoint.load(os.path.join(two, "checkpoint.pt"))["driver"]["sampler"]
    assert torch.equal(a["indices"], b["indices"]) and torch.allclose(a["weights"], b["weights"])
    summary = json.load(open(os.path.join(two, "summary.json")))
    per_rank = math.ceil(len(a["indices"]) / 2)
    assert summary["world_size"] == 2 and summary["steps"] == 2 * math.ceil(per_rank / 64)
    assert json.loads(printed.strip().splitlines()[-1])["epochs"] == 2


def test_ddp_resume_of_another_configuration_is_refused(tmp_path):
    out = str(tmp_path / "run")
    _train(out, "--strategy", "selective_backprop", "--epochs", "1")
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    config["epochs"] = 2  # a longer run is another configuration: refused
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO) if p))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "datadiet", "train", "--resume", out, "--no-progress"], env=env, timeout=TIMEOUT,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "epochs: checkpoint 1, this run 2" in done.stderr
