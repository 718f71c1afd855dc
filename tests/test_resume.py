"""Exact resume: a run restarted from any of its checkpoints (mid-epoch or at an epoch end) ends
with parameters bit-identical to the run never stopped — for every regime's state (subset and
weights, loss tables, forgetting counters, Selective-Backprop history) — and a run killed with
SIGKILL mid-epoch resumes to the same parameters."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from datadiet.train import checkpoint
from datadiet.train import trainer as trainer_module
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer
from tests import subprocesses


CASES = {
    "full": dict(strategy="full"),
    "gradmatch": dict(strategy="gradmatch", fraction=0.3, strategy_params={"every": 2}),
    "selective_backprop": dict(strategy="selective_backprop", strategy_params={"rule": "jiang", "start": 0.0}),
    "loss_training": dict(strategy="loss", fraction=0.4, strategy_params={"source": "training"}),
    "forgetting": dict(strategy="forgetting", fraction=0.5, epochs=5, strategy_params={"warm": 0.9}),
    "random_online": dict(strategy="random_online", fraction=0.3, strategy_params={"every": 1}),
    "infobatch": dict(strategy="infobatch", strategy_params={"anneal": 0.25}),
    "adaselection": dict(strategy="adaselection", strategy_params={"lam": 0.5, "draw": True, "methods": "big_loss,"
                                                                   "small_loss,grad_norm,adaboost,coreset1"}),
}


def _final_model(out):
    return checkpoint.load(os.path.join(out, "checkpoint.pt"))["model"]


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_every_checkpoint_is_bit_identical(case, tmp_path, monkeypatch):
    base = dict(epochs=4, batch_size=64, checkpoint_every=9, progress=False)
    base.update(CASES[case])
    copies = []
    real_save = checkpoint.save

    def spy(path, state, config):
        real_save(path, state, config)
        copies.append(str(tmp_path / f"ckpt{len(copies)}.pt"))
        shutil.copy(path, copies[-1])

    monkeypatch.setattr(trainer_module.checkpoint, "save", spy)
    whole = str(tmp_path / "whole")
    Trainer(TrainConfig(out=whole, **base)).fit()
    monkeypatch.setattr(trainer_module.checkpoint, "save", real_save)
    expected = _final_model(whole)
    mid = [c for c in copies if checkpoint.load(c)["ranks"][0]["partial"] is not None]
    assert mid, "no mid-epoch checkpoint was written"
    for source in (mid[0], mid[len(mid) // 2], copies[len(copies) // 2]):
        run = str(tmp_path / "resumed")
        shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run)
        shutil.copy(os.path.join(whole, "config.json"), run)
        shutil.copy(source, os.path.join(run, "checkpoint.pt"))
        summary = Trainer(TrainConfig(resume=run, **base)).fit()
        got = _final_model(run)
        assert all(torch.equal(expected[k], got[k]) for k in expected), f"resumed from {source}"
        assert summary["epochs"] == base["epochs"]
        assert len(open(os.path.join(run, "metrics.jsonl")).readlines()) == base["epochs"]


def _train_command(out, *extra):
    return [sys.executable, "-m", "datadiet", "train", "--strategy", "selective_backprop", "--param", "rule='jiang'",
            "--param", "start=0.0", "--epochs", "40", "--checkpoint-every", "3", "--out", out, "--no-progress",
            *extra]


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    env = subprocesses.env()
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    subprocess.run(_train_command(whole), check=True, env=env, timeout=300, capture_output=True)
    proc = subprocess.Popen(_train_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(killed, "checkpoint.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(os.path.join(killed, "summary.json"))
    state = checkpoint.load(os.path.join(killed, "checkpoint.pt"))
    assert 0 < state["step"] and state["epoch"] < 40
    done = subprocess.run([sys.executable, "-m", "datadiet", "train", "--resume", killed, "--no-progress"], env=env,
                          timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected, got = _final_model(whole), _final_model(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert json.load(open(os.path.join(killed, "summary.json")))["epochs"] == 40


def test_damaged_checkpoint_is_refused_on_resume(tmp_path):
    out = str(tmp_path / "run")
    Trainer(TrainConfig(strategy="random", fraction=0.5, epochs=1, out=out, progress=False)).fit()
    path = os.path.join(out, "checkpoint.pt")
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        Trainer(TrainConfig(strategy="random", fraction=0.5, epochs=1, resume=out, progress=False))
    open(path, "wb").write(bytes(data[:100]))
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        Trainer(TrainConfig(strategy="random", fraction=0.5, epochs=1, resume=out, progress=False))


def test_checkpoint_identity_names_the_strategy_without_object_addresses():
    from datadiet import strategies
    assert strategies.make("full").describe() == strategies.make("full").describe() == \
        "datadiet.strategies.static.Full"
    assert "fraction=0.3" in strategies.make("gradmatch", fraction=0.3).describe() and "0x" not in \
        strategies.make("gradmatch", fraction=0.3).describe()
