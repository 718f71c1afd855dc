"""Guards for long multi-rank runs that need no GPU to check: the warning naming ranks left idle
by ensemble members or LiPT workers, the loud fallback when the CUDA kernels did not load, the
phase clock, the process-group timeout's default, bfloat16 score tables."""

import hashlib
import os
import tempfile
import warnings

import pytest
import torch

from datadiet import _dist, backends
from datadiet import _extension as ext
from datadiet.train.config import TrainConfig


@pytest.mark.parametrize("items, size, fewer", [(3, 8, "ranks 3, 4, 5, 6, 7 0 each and the others 1"),
                                                (10, 4, "ranks 2, 3 2 each and the others 3")])
def test_unbalanced_items_name_the_waiting_ranks(monkeypatch, items, size, fewer):
    monkeypatch.setattr(_dist, "world", lambda: (size, 0))
    with pytest.warns(RuntimeWarning, match=fewer):
        _dist.warn_unbalanced("ensemble member", items, size)


def test_balanced_items_and_other_ranks_do_not_warn(monkeypatch):
    monkeypatch.setattr(_dist, "world", lambda: (4, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dist.warn_unbalanced("lipt worker", 8, 4)
        _dist.warn_unbalanced("lipt worker", 3, 4)  # rank 1: rank 0 says it
        _dist.warn_unbalanced("lipt worker", 3, 1)


def test_cuda_tensors_without_the_cuda_kernels_warn_with_the_reason(monkeypatch):
    monkeypatch.setattr(ext, "CUDA_ERROR", "loading _C_cuda.so failed: undefined symbol cudaFoo")
    with pytest.warns(RuntimeWarning, match="CUDA kernels are not loaded .*undefined symbol cudaFoo"):
        choices = backends._compute_available(torch.device("cuda"))
    assert "cuda" not in choices and choices[-1] == "torch"


def test_the_phase_clock_waits_for_cuda_work(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    _dist.clock(torch.device("cpu"))
    assert synced == []
    _dist.clock(torch.device("cuda", 1))
    assert synced == [torch.device("cuda", 1)]


def test_the_default_timeout_covers_a_long_phase():
    assert TrainConfig().dist_timeout >= 1800  # a proxy, a member or a LiPT worker between collectives


def test_bfloat16_features_halve_the_table_and_survive_a_shard_file():
    """score_features = bfloat16: the scoring pass keeps the features in bfloat16 (the GraNd norms
    still from full precision), a selection job's shard stores them bit for bit, and a bad value
    is refused by name."""
    from datadiet.scores import score_dataset
    from datadiet.selection.shards import ShardedScores, _to_npz
    from datadiet.train import datasets, models
    from datadiet.train.data import IndexedDataset

    bundle = datasets.load("digits")
    torch.manual_seed(0)
    model = models.build("mlp", 10, (1, 8, 8))
    data = IndexedDataset(torch.utils.data.Subset(bundle.train, range(300)))
    full = score_dataset(model, data, features=True, batch_size=64)
    half = score_dataset(model, data, features=True, batch_size=64, features_dtype=torch.bfloat16)
    assert half.features.dtype == torch.bfloat16 and torch.equal(half.features, full.features.bfloat16())
    assert torch.equal(half.grad_norm, full.grad_norm)
    assert half.features.untyped_storage().nbytes() * 2 == full.features.untyped_storage().nbytes()
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "00000.npz")
        blob = _to_npz(half)
        with open(path, "wb") as f:
            f.write(blob)
        with open(path[:-4] + ".sha256", "w", encoding="ascii") as f:
            f.write(hashlib.sha256(blob).hexdigest())
        back = ShardedScores._read(path, 300)
    assert back.features.dtype == torch.bfloat16 and torch.equal(back.features, half.features)
    with pytest.raises(ValueError, match=r"config score_features = 'float16': must be one of \('float32', "
                                         r"'bfloat16'\)"):
        TrainConfig(score_features="float16").validate()
    assert "score_features" not in TrainConfig().validate().identity()  # older runs still resume
    assert TrainConfig(score_features="bfloat16").validate().identity()["score_features"] == "bfloat16"
