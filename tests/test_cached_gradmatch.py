"""Cached-GradMatch (seed 003): a gradmatch run's rounds recorded and replayed exactly, a cache
from another setting (pool, labels, fraction, R, warm-up) or one lacking a needed round refused
by name, a truncated or corrupted file refused, and the CLI's --cache on a real run."""

import json

import pytest
import torch

from datadiet import strategies
from datadiet.cli import main as cli
from datadiet.strategies.base import Context
from datadiet.strategies.cached import CacheError, read_cache
from tests.test_strategies import context


def _record(path, epochs=10, **params):
    s = strategies.make("gradmatch", fraction=0.25, every=3, cache=str(path), **params)
    s.setup(context(epochs=epochs))
    return {e: sel for e in range(epochs) if (sel := s.select(e)) is not None}


def _replay(path, epochs=10, ctx=None, **params):
    s = strategies.make("cached_gradmatch", **{"fraction": 0.25, "every": 3, "cache": str(path), **params})
    s.setup(ctx or context(epochs=epochs))
    return s


def test_replay_equals_the_recorded_rounds(tmp_path):
    path = tmp_path / "gm.cache"
    recorded = _record(path)
    assert sorted(recorded) == [0, 3, 6, 9]
    replay = _replay(path)
    for epoch in range(10):
        got = replay.select(epoch)
        assert (got is None) == (epoch not in recorded)
        if got is not None:
            assert torch.equal(got.indices, recorded[epoch].indices)
            assert torch.equal(got.weights, recorded[epoch].weights)
    rounds, producer = read_cache(str(path))
    assert [(r["start"], r["end"]) for r in rounds] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert "GradMatch" in producer["strategy"] and "every=3" in producer["strategy"]
    assert len(_replay(path, epochs=7).select(6)) == len(recorded[6])  # a shorter replay uses a prefix


def test_a_resumed_recording_keeps_the_rounds_before_the_checkpoint(tmp_path):
    """GradMatch's recorded rounds are in its checkpoint state: a run resumed after epoch 3 writes
    the cache an uninterrupted run writes (not only the rounds after the resume)."""
    whole, resumed = tmp_path / "whole.cache", tmp_path / "resumed.cache"
    _record(whole)
    first = strategies.make("gradmatch", fraction=0.25, every=3, cache=str(resumed))
    first.setup(context(epochs=10))
    for epoch in range(4):
        first.select(epoch)
    state = first.state_dict()
    assert len(state["recorded"]) == 2
    second = strategies.make("gradmatch", fraction=0.25, every=3, cache=str(resumed))
    second.setup(context(epochs=10))
    second.load_state_dict(state)
    for epoch in range(4, 10):
        second.select(epoch)
    got, want = read_cache(str(resumed))[0], read_cache(str(whole))[0]
    assert [(r["start"], r["end"]) for r in got] == [(r["start"], r["end"]) for r in want] == [(0, 3), (3, 6),
                                                                                                  (6, 9), (9, 10)]
    for a, b in zip(got, want):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["weights"], b["weights"])


def test_a_cache_from_another_setting_is_refused(tmp_path):
    path = tmp_path / "gm.cache"
    _record(path)
    with pytest.raises(CacheError, match=r"fraction: selection cache 0.25, this run 0.3"):
        _replay(path, fraction=0.3)
    with pytest.raises(CacheError, match=r"every: selection cache 3, this run 4"):
        _replay(path, every=4)
    with pytest.raises(CacheError, match=r"warm_epochs: selection cache 0, this run 2"):
        _replay(path, warm=0.5)
    other = context(epochs=10)
    with pytest.raises(CacheError, match=r"labels: selection cache '\w+', this run '\w+'"):
        _replay(path, ctx=Context(**{**vars(other), "labels": other.labels.flip(0)}))
    with pytest.raises(CacheError, match=r"n: selection cache 240, this run 200"):
        _replay(path, ctx=context(n=200))
    with pytest.raises(CacheError, match=r"selects at epochs \[0, 3, 6, 9, 12\].*missing \[12\]"):
        _replay(path, epochs=14)
    with pytest.raises(ValueError, match="cache must name the file"):
        _replay(path, cache=None)


def test_a_damaged_cache_is_refused(tmp_path):
    path = tmp_path / "gm.cache"
    _record(path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CacheError, match="truncated"):
        _replay(path)
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(CacheError, match="checksum mismatch"):
        _replay(path)
    path.write_bytes(b"not a cache at all" * 10)
    with pytest.raises(CacheError, match="not a datadiet selection cache"):
        _replay(path)
    with pytest.raises(CacheError, match="cannot be read"):
        _replay(tmp_path / "missing.cache")


def test_cli_records_and_replays_on_another_architecture(tmp_path, capsys):
    cache = str(tmp_path / "gm.cache")
    common = ["--fraction", "0.2", "--every", "2", "--epochs", "4", "--batch-size", "64", "--no-progress"]
    assert cli(["train", "--strategy", "gradmatch", "--cache", cache, "--out", str(tmp_path / "a"), *common]) == 0
    assert cli(["train", "--strategy", "cached_gradmatch", "--cache", cache, "--model", "cnn", "--lr", "0.1",
                "--optimizer", "adamw", "--out", str(tmp_path / "b"), *common]) == 0
    a = json.load(open(tmp_path / "a" / "summary.json"))
    b = json.load(open(tmp_path / "b" / "summary.json"))
    assert [s["size"] for s in a["selections"]] == [s["size"] for s in b["selections"]]
    assert [s["cached_from"] for s in b["selections"]] == [0, 2]
    assert b["time"]["scoring"] == 0.0
    capsys.readouterr()
    assert cli(["train", "--strategy", "cached_gradmatch", "--cache", cache, "--fraction", "0.3", "--every", "2",
                "--epochs", "4", "--no-progress"]) == 2
    assert "fraction: selection cache 0.2, this run 0.3" in capsys.readouterr().err


def test_reproduction_at_tiny_scale(tmp_path):
    assert cli(["reproduce", "cached-gradmatch", "--lrs", "0.1", "--seeds", "0", "--epochs", "2", "--replay-model",
                "mlp", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.load(open(tmp_path / "cached-gradmatch.json"))["rows"]
    assert [r["setting"] for r in rows] == ["lr 0.1", "model mlp"]
    for r in rows:
        assert r["cached_gradmatch_selection_s"] < r["gradmatch_selection_s"]
        assert r["full_speedup"] == pytest.approx(1.0)


def test_a_resume_refuses_a_re_recorded_cache_and_a_bad_path_fails_early(tmp_path):
    path = tmp_path / "gm.cache"
    _record(path)
    state = _replay(path).state_dict()
    _record(path, lam=0.1)  # the same setting (pool, fraction, R), another run: other rounds
    with pytest.raises(CacheError, match="changed since this run's checkpoint"):
        _replay(path).load_state_dict(state)
    with pytest.raises(ValueError, match="cannot be written"):
        _record(tmp_path)  # a folder
