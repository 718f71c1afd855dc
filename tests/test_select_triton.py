"""The Triton selection kernels equal the CPU kernels bit for bit (same indices, same order, same
coins): through the interpreter on CPU tensors when there is no GPU (small shapes), compiled on
CUDA tensors when there is one."""

import pytest
import torch
from conftest import DEVICE_BACKENDS

from datadiet.ops import selective_backprop_keep_, stratified_select, topk_select, weighted_sample
from select_helpers import ragged_offsets

pytest.importorskip("triton", reason="triton is not installed (CPU-only torch)")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [0, 1, 7, 1500] + ([100_003, 3_000_000] if ON_GPU else [])


def data(n, dtype, seed, distinct=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, distinct, (n,), generator=g).float() if distinct else torch.rand(n, generator=g)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_topk_select_equals_cpu(n, dtype):
    s = data(n, dtype, seed=n, distinct=40)
    if n:
        s[n // 2] = float("nan")
    for largest in (True, False):
        for k in sorted({0, min(n, 1), n // 4, n}):
            want = topk_select(s, k, largest=largest, backend="cpu")
            got = topk_select(s.to(DEVICE), k, largest=largest, backend="triton")
            assert torch.equal(got.cpu(), want), (n, k, largest)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_weighted_sample_equals_cpu(n, dtype):
    w = data(n, dtype, seed=n + 1)
    positive = int((w > 0).sum())
    for seed in (0, 2**40 + 3):
        for k in sorted({0, min(positive, 1), positive // 3, positive}):
            want = weighted_sample(w, k, seed=seed, backend="cpu")
            got = weighted_sample(w.to(DEVICE), k, seed=seed, backend="triton")
            assert torch.equal(got.cpu(), want), (n, k, seed)


def test_segments_equal_cpu():
    sizes = [0, 5, 700, 1, 300]
    offs = ragged_offsets(sizes)
    x = data(offs[-1], torch.float32, seed=3, distinct=30)
    ks = [0, 5, 100, 1, 299]
    assert torch.equal(topk_select(x.to(DEVICE), ks, offsets=offs, backend="triton").cpu(),
                       topk_select(x, ks, offsets=offs, backend="cpu"))
    assert torch.equal(weighted_sample(x.to(DEVICE), [0, 3, 50, 1, 20], offsets=offs, seed=5, backend="triton").cpu(),
                       weighted_sample(x, [0, 3, 50, 1, 20], offsets=offs, seed=5, backend="cpu"))
    picks = stratified_select(x.to(DEVICE), 4, 0.2, seed=2, backend="triton")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(picks, stratified_select(x, 4, 0.2, seed=2, backend="cpu")))


@pytest.mark.parametrize("size, n", [(16, 5), (16, 40), (300, 64)])
def test_selective_backprop_equals_cpu(size, n):
    h_cpu, s_cpu = torch.zeros(size), torch.zeros(2, dtype=torch.long)
    h_dev, s_dev = h_cpu.clone().to(DEVICE), s_cpu.clone().to(DEVICE)  # .to("cpu") would alias
    for step in range(4):
        losses = data(n, torch.float32, seed=step)
        want = selective_backprop_keep_(losses, h_cpu, s_cpu, beta=1.5, seed=9, step=step, backend="cpu")
        got = selective_backprop_keep_(losses.to(DEVICE), h_dev, s_dev, beta=1.5, seed=9, step=step,
                                       backend="triton")
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
        assert torch.equal(h_dev.cpu(), h_cpu) and torch.equal(s_dev.cpu(), s_cpu)


def test_custom_ops_have_fakes():
    w = data(50, torch.float32, seed=1).to(DEVICE)
    torch.library.opcheck(torch.ops.datadiet.topk_select_triton.default, (w, [0, 20, 50], [2, 5], True))
    torch.library.opcheck(torch.ops.datadiet.weighted_sample_triton.default, (w, [0, 50], [7], 3))


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("bad", [[-1, 0], [8, 8], [3, 5], [0, 9], [2, -1]])
def test_an_invalid_state_is_detected_on_the_device(backend, bad):
    """A corrupt state (the CPU kernel raises) writes nothing: history and state stay as they were,
    every loss is marked not kept with a NaN percentile (no host synchronisation to raise)."""
    history, state = torch.arange(8.0, device=DEVICE), torch.tensor(bad, device=DEVICE)
    keep, percentile = selective_backprop_keep_(torch.rand(5, device=DEVICE), history, state, beta=1.0, seed=0,
                                                step=0, backend=backend)
    assert not keep.any() and percentile.isnan().all()
    assert torch.equal(history.cpu(), torch.arange(8.0)) and state.tolist() == bad
