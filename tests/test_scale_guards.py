"""Guards for long multi-rank runs that need no GPU to check: the warning naming ranks left idle
by ensemble members or LiPT workers, the loud fallback when the CUDA kernels did not load, the
phase clock, the process-group timeout's default."""

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
