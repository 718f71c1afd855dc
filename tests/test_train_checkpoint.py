"""Checkpoints: round trip, atomic replacement (a failed write leaves the previous checkpoint and
no temporary file), and refusal of truncated, corrupted, foreign, other-version and
other-configuration files with messages that say which."""

import os
import struct

import pytest
import torch

from datadiet.train import checkpoint
from datadiet.train.checkpoint import CheckpointError

CONFIG = {"dataset": "digits", "fraction": 0.1, "every": 5, "seed": 0}


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4, generator=g)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "step": 41,
            "sampler": {"indices": torch.randperm(10, generator=g), "weights": None}, "rng": g.get_state()}


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "last.ckpt"
    saved = state()
    checkpoint.save(str(path), saved, CONFIG)
    loaded = checkpoint.load(str(path), CONFIG)
    assert loaded["epoch"] == 3 and loaded["step"] == 41 and loaded["sampler"]["weights"] is None
    for k, v in saved["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(loaded["rng"], saved["rng"])
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (3, 4)
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.ckpt")
    checkpoint.save(path, {"epoch": 1}, CONFIG)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"epoch": 2}, CONFIG)
    monkeypatch.undo()
    assert checkpoint.load(path, CONFIG)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_truncated_corrupted_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "last.ckpt"
    checkpoint.save(str(path), state(), CONFIG)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"truncated or padded \(\d+ payload bytes, the header says \d+\)"):
        checkpoint.load(str(path))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"checksum mismatch \(the file is corrupted\)"):
        checkpoint.load(str(path))
    torch.save(state(), path)
    with pytest.raises(CheckpointError, match=r"not a datadiet checkpoint"):
        checkpoint.load(str(path))
    header = struct.Struct("<8sIQ32s")
    _, _, length, digest = header.unpack_from(data)
    path.write_bytes(header.pack(checkpoint.MAGIC, 9, length, digest) + data[header.size:])
    with pytest.raises(CheckpointError, match=r"format version 9, this datadiet reads 1"):
        checkpoint.load(str(path))
    with pytest.raises(CheckpointError, match=r"cannot be read"):
        checkpoint.load(str(tmp_path / "missing.ckpt"))


def test_another_configuration_is_refused_naming_every_difference(tmp_path):
    path = str(tmp_path / "last.ckpt")
    checkpoint.save(path, {"epoch": 1}, CONFIG)
    other = {**CONFIG, "fraction": 0.3, "model": "mlp"}
    del other["every"]
    with pytest.raises(CheckpointError, match=r"another configuration: every = 5 in the checkpoint, absent from this "
                                              r"run; fraction: checkpoint 0.1, this run 0.3; model = 'mlp' in this "
                                              r"run, absent from the checkpoint"):
        checkpoint.load(path, other)
    assert checkpoint.load(path)["epoch"] == 1  # no config given: no comparison
