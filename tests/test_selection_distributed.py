"""``datadiet select`` under torchrun (2 gloo ranks on CPU): each rank scores its own shards and
rank 0 selects, and the files are byte for byte those of one process with the same scorer; a
proxy is trained once by DDP; the ranks' shard split and the loader's shard-aligned batches are
checked directly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from datadiet.scores import IndexedDataset, ScoreTable, score_dataset, score_shards
from datadiet.scores.scoring import ShardBatches
from datadiet.selection.shards import ShardedScores, ShardsDone
from datadiet.strategies.pretrained import fingerprint
from datadiet.train import checkpoint, datasets, models
from tests.subprocesses import TORCHRUN, env

TIMEOUT = 300


def _select(args, launcher=(sys.executable,)):
    # one thread per process, as torchrun sets: CPU kernels may round differently by thread count
    done = subprocess.run([*launcher, "-m", "datadiet", "select", "--device", "cpu", "--no-progress", *args],
                          env={**env(), "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _weights(tmp_path) -> str:
    bundle = datasets.load("digits")
    torch.manual_seed(7)
    model = models.build("mlp", bundle.num_classes, bundle.input_shape, 32)
    path = str(tmp_path / "w.pt")
    torch.save(model.state_dict(), path)
    return path


def test_two_ranks_write_the_files_one_process_writes(tmp_path):
    weights = _weights(tmp_path)
    for strategy, extra in (("el2n", []), ("gradmatch", ["--param", "lam=0.5"]),
                            ("strata", ["--param", "strata=4", "--param", "stratum=1"])):
        common = ["--weights", weights, "--width", "32", "--strategy", strategy, "--fraction", "0.2",
                  "--shard-size", "100", "--eval-batch-size", "32", *extra]
        one, two = tmp_path / f"{strategy}-1", tmp_path / f"{strategy}-2"
        _select([*common, "--out", str(one)])
        printed = _select([*common, "--out", str(two)], launcher=TORCHRUN)
        assert printed.count("datadiet select:") == 1  # rank 0 reports; rank 1 is quiet
        for name in ("subset.csv", "scores.npz"):
            assert (one / name).read_bytes() == (two / name).read_bytes(), (strategy, name)
        manifest = json.loads((two / "manifest.json").read_text())
        assert manifest["shards"] == {"size": 100, "scored": 15, "reused": 0, "ranks": 2}
        assert not (two / ".datadiet-shards").exists()


def test_a_ddp_proxy_is_the_scorer_of_every_rank(tmp_path):
    """The proxy is trained by DDP over both ranks and saved once; both ranks' shards are scored by
    that one model: scores.npz equals scoring the saved proxy in this process."""
    out = tmp_path / "proxy"
    _select(["--strategy", "el2n", "--fraction", "0.3", "--proxy-epochs", "1", "--shard-size", "500", "--out",
             str(out)], launcher=TORCHRUN)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source"] == "proxy" and manifest["size"] == 438 and manifest["shards"]["ranks"] == 2
    bundle = datasets.load("digits")
    model = models.build("mlp", bundle.num_classes, bundle.input_shape, manifest["model"]["width"])
    model.load_state_dict(checkpoint.load(str(out / "proxy.pt"))["model"])
    assert fingerprint(model) == manifest["model"]["fingerprint"]
    ours = score_dataset(model, IndexedDataset(bundle.train_eval), batch_size=256)
    saved = np.load(out / "scores.npz")
    torch.testing.assert_close(torch.from_numpy(saved["el2n"]), ours.el2n, rtol=1e-5, atol=1e-6)


def _dataset(n=53):
    g = torch.Generator().manual_seed(0)
    return IndexedDataset(torch.utils.data.TensorDataset(torch.randn(n, 64, generator=g), torch.arange(n) % 10))


def test_shard_batches_never_cross_a_shard():
    batches = list(ShardBatches([range(0, 10), range(20, 23), range(30, 37)], 4))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [20, 21, 22], [30, 31, 32, 33], [34, 35, 36]]
    assert len(ShardBatches([range(0, 10), range(20, 23), range(30, 37)], 4)) == 6


def test_score_shards_equals_the_whole_pass_row_for_row():
    ds = _dataset()
    torch.manual_seed(1)
    model = models.build("mlp", 10, (1, 8, 8), 16)
    whole = score_dataset(model, ds, batch_size=8, features=True, errors=True)
    shards = [range(40, 53), range(0, 17), range(17, 40)]
    for s, table in score_shards(model, ds, shards, batch_size=8, features=True, errors=True):
        rows = torch.tensor(list(shards[s]))
        for name, value in vars(table).items():
            if value is not None:
                torch.testing.assert_close(value, getattr(whole, name)[rows], rtol=1e-6, atol=1e-6)


def test_ranks_split_the_missing_shards_and_only_rank_0_assembles(tmp_path, monkeypatch):
    ds = _dataset()
    torch.manual_seed(1)
    model = models.build("mlp", 10, (1, 8, 8), 16)
    asked = {0: [], 1: []}

    def stream(rank):
        def run(shards, model=None, **wanted):
            asked[rank].extend(shards)
            return score_shards(model, ds, shards, batch_size=8)
        return run

    # two ranks played in one process: rank 0's list of missing shards (a broadcast under torchrun)
    monkeypatch.setattr(ShardedScores, "_agree", lambda self, missing: list(range(6)))
    setting, cpu = {"case": 1}, torch.device("cpu")
    first = ShardedScores(str(tmp_path), setting, 10, None, stream(1), len(ds), cpu, rank=1, world=2)
    with pytest.raises(ShardsDone):
        first(model=model)
    assert asked[1] == [range(10, 20), range(30, 40), range(50, 53)]  # shards 1, 3 and 5 of 0..5
    monkeypatch.undo()
    second = ShardedScores(str(tmp_path), setting, 10, None, stream(0), len(ds), cpu, rank=0, world=1, poll=0.01)
    table = second(model=model)
    assert asked[0] == [range(0, 10), range(20, 30), range(40, 50)]  # rank 1's are read back
    assert second.reused == 3 and second.scored == 3 and isinstance(table, ScoreTable)
    torch.testing.assert_close(table.loss, score_dataset(model, ds, batch_size=8).loss, rtol=1e-6, atol=1e-6)
    # a shard whose bytes no longer match its digest is scored again
    path = tmp_path / ".datadiet-shards" / "scores" / "00001.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    again = ShardedScores(str(tmp_path), setting, 10, None, stream(0), len(ds), cpu)
    asked[0].clear()
    again(model=model)
    assert asked[0] == [range(10, 20)] and again.reused == 5


def test_rank_0_waits_for_the_shards_it_did_not_score(tmp_path, monkeypatch):
    import threading
    import time

    ds = _dataset()
    torch.manual_seed(1)
    model = models.build("mlp", 10, (1, 8, 8), 16)
    monkeypatch.setattr(ShardedScores, "_agree", lambda self, missing: [0, 1])  # rank 0's list, both missing
    cpu = torch.device("cpu")

    def ranked(rank):
        return ShardedScores(str(tmp_path), {"case": 2}, 30, None,
                             lambda shards, model=None, **kw: score_shards(model, ds, shards, batch_size=8), len(ds),
                             cpu, rank=rank, world=2, poll=0.01)
    zero, one = ranked(0), ranked(1)
    result = {}
    waiting = threading.Thread(target=lambda: result.setdefault("table", zero(model=model)), daemon=True)
    waiting.start()  # scores shard 0, then polls for shard 1
    time.sleep(0.3)
    with pytest.raises(ShardsDone):
        one(model=model)  # rank 1 writes shard 1 (rows 30..52)
    waiting.join(timeout=120)
    assert "table" in result, "rank 0 did not see rank 1's shard"
    assert zero.scored == 2 and zero.reused == 0 and len(result["table"]) == len(ds)
    torch.testing.assert_close(result["table"].loss, score_dataset(model, ds, batch_size=8).loss, rtol=1e-6,
                               atol=1e-6)


def test_a_rank_that_does_not_see_rank_0s_folder_is_refused(tmp_path):
    cpu = torch.device("cpu")
    zero = ShardedScores(str(tmp_path / "a"), {"case": 3}, 10, None, None, 20, cpu)
    told = {"setting": zero.setting, "token": "not what the folder holds"}
    other = ShardedScores.__new__(ShardedScores)
    other.root, other.rank, other.setting = zero.root, 1, zero.setting
    with pytest.raises(ValueError, match="rank 1 does not see the files rank 0 writes"):
        other._check_shared(told)
    with open(os.path.join(zero.root, "index.json")) as f:
        told = json.load(f)
    other.setting = {"case": 4}
    with pytest.raises(ValueError, match="rank 1 scores another setting than rank 0"):
        other._check_shared(told)
