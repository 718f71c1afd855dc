"""The CUDA selection kernels (skipped without a GPU) equal the CPU kernels bit for bit: top-k
and weighted samples over dtypes, layouts and sizes up to 5·10^7, Selective-Backprop coins and
state; opcheck and torch.compile on device tensors."""

import pytest
import torch
from conftest import requires_cuda_kernels

from datadiet.ops import selective_backprop_keep_, stratified_select, topk_select, weighted_sample
from select_helpers import ragged_offsets

pytestmark = requires_cuda_kernels
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def data(n, dtype, seed, distinct=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, distinct, (n,), generator=g).float() if distinct else torch.rand(n, generator=g)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 7, 4097, 100_003, 5_000_000])
def test_topk_and_sample_equal_cpu(n, dtype):
    x = data(n, dtype, seed=n, distinct=1000)
    for k in sorted({0, min(n, 1), n // 10, n}):
        for largest in (True, False):
            assert torch.equal(topk_select(x.cuda(), k, largest=largest, backend="cuda").cpu(),
                               topk_select(x, k, largest=largest, backend="cpu"))
        positive = int((x > 0).sum())
        kk = min(k, positive)
        assert torch.equal(weighted_sample(x.cuda(), kk, seed=k, backend="cuda").cpu(),
                           weighted_sample(x, kk, seed=k, backend="cpu"))


def test_fifty_million():
    n = 50_000_000
    x = data(n, torch.float32, seed=1)
    k = n // 10
    assert torch.equal(topk_select(x.cuda(), k, backend="cuda").cpu(), topk_select(x, k, backend="cpu"))
    assert torch.equal(weighted_sample(x.cuda(), k, seed=1, backend="cuda").cpu(),
                       weighted_sample(x, k, seed=1, backend="cpu"))


def test_segments_rows_and_groups_equal_cpu():
    sizes = [0, 3, 70_000, 1, 5000, 1281]
    offs = ragged_offsets(sizes)
    x = data(offs[-1], torch.float32, seed=2, distinct=50)
    ks = [0, 3, 700, 1, 4999, 128]
    assert torch.equal(topk_select(x.cuda(), ks, offsets=offs, backend="cuda").cpu(),
                       topk_select(x, ks, offsets=offs, backend="cpu"))
    assert torch.equal(weighted_sample(x.cuda(), ks, offsets=offs, seed=3, backend="cuda").cpu(),
                       weighted_sample(x, ks, offsets=offs, seed=3, backend="cpu"))
    rows = data(1000 * 1281, torch.float32, seed=4).view(1000, 1281)
    assert torch.equal(topk_select(rows.cuda(), 128, backend="cuda").cpu(), topk_select(rows, 128, backend="cpu"))
    picks = stratified_select(x.cuda(), 5, 0.1, seed=1, backend="cuda")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(picks, stratified_select(x, 5, 0.1, seed=1, backend="cpu")))


@pytest.mark.parametrize("size, n", [(16, 5), (1024, 256), (100, 3000)])
def test_selective_backprop_equals_cpu(size, n):
    h_cpu, s_cpu = torch.zeros(size), torch.zeros(2, dtype=torch.long)
    h_dev, s_dev = h_cpu.cuda(), s_cpu.cuda()
    for step in range(5):
        losses = data(n, torch.float32, seed=step)
        want = selective_backprop_keep_(losses, h_cpu, s_cpu, beta=3.0, seed=4, step=step, backend="cpu")
        got = selective_backprop_keep_(losses.cuda(), h_dev, s_dev, beta=3.0, seed=4, step=step, backend="cuda")
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
        assert torch.equal(h_dev.cpu(), h_cpu) and torch.equal(s_dev.cpu(), s_cpu)


def test_opcheck_and_compile_on_cuda():
    x = data(3000, torch.float32, seed=5).cuda()
    torch.library.opcheck(torch.ops.datadiet.topk_select.default, (x, [0, 1000, 3000], [5, 50], True))
    torch.library.opcheck(torch.ops.datadiet.weighted_sample.default, (x, [0, 3000], [40], 2))
    fn = torch.compile(lambda v: weighted_sample(v, 40, seed=2, check_values=False, backend="cuda"), fullgraph=True)
    assert torch.equal(fn(x), weighted_sample(x, 40, seed=2, backend="cuda"))
