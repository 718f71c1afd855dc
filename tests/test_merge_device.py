"""The Triton (and, with a GPU, CUDA) merging kernels against the CPU kernels: the same masks and
pruned weights bit for bit (global and per-tensor, ties, mixed dtypes in one list, empty tensors),
averages and lerps to float32 rounding; the NaN check; opcheck of the Triton custom ops. Without
a GPU, Triton runs through the interpreter on CPU tensors (small shapes)."""

import pytest
import torch
from conftest import DEVICE_BACKENDS

from datadiet.ops import average_, lerp_, magnitude_prune_

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
BACKENDS = DEVICE_BACKENDS
BIG = 3_000_000 if ON_GPU else 70_001


def mixed(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BIG, generator=g), torch.randn(300, generator=g).half(),
            torch.randn(5, 7, generator=g).bfloat16(), torch.zeros(0), torch.randn(1, generator=g)]


def on(ts):
    return [t.to(DEVICE) for t in ts]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("density", [1e-6, 0.3, 0.9, 1.0])
def test_prune_equals_cpu(backend, scope, density):
    ts = mixed(1)
    dev = on(ts)
    want = magnitude_prune_(ts, density, scope=scope, backend="cpu")
    got = magnitude_prune_(dev, density, scope=scope, backend=backend)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    assert all(torch.equal(d.cpu(), t) for d, t in zip(dev, ts))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_ties_across_chunks_and_no_masks(backend):
    x = torch.ones(200_000)
    x[::7] = 2.0
    want = magnitude_prune_([x.clone(), x.clone()], 0.5, backend="cpu")
    got = magnitude_prune_(on([x.clone(), x.clone()]), 0.5, backend=backend)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
    y = on([x.clone()])
    assert magnitude_prune_(y, 0.25, return_masks=False, backend=backend) is None
    assert int((y[0] != 0).sum()) == 50_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_rejects_nan(backend):
    x = torch.randn(50)
    x[7] = float("nan")
    with pytest.raises(ValueError, match=r"tensors\[1\] has a NaN at flat index 7"):
        magnitude_prune_(on([torch.randn(3), x]), 0.5, backend=backend)


def close(got, want):
    for g, w in zip(got, want):
        tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[w.dtype]
        torch.testing.assert_close(g.cpu().float(), w.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_average_and_lerp_equal_cpu(backend):
    models = [mixed(s) for s in range(3)]
    want = [torch.empty_like(t) for t in models[0]]
    got = on(want)
    average_(want, models, [0.2, 0.3, 0.5], backend="cpu")
    average_(got, [on(m) for m in models], [0.2, 0.3, 0.5], backend=backend)
    close(got, want)
    lerp_(want, models[1], 0.3, backend="cpu")
    lerp_(got, on(models[1]), 0.3, backend=backend)
    close(got, want)


def test_triton_custom_ops_have_fakes():
    pytest.importorskip("triton")
    ts = on([torch.randn(40), torch.randn(3, 7)])
    torch.library.opcheck(torch.ops.datadiet.magnitude_prune_triton.default,
                          ([t.clone() for t in ts], [torch.empty(t.shape, dtype=torch.bool, device=DEVICE) for t in ts],
                           [20]))
    torch.library.opcheck(torch.ops.datadiet.lerp_triton.default, ([t.clone() for t in ts], ts, 0.3))
    torch.library.opcheck(torch.ops.datadiet.average_triton.default, ([t.clone() for t in ts], ts + ts, [0.5, 0.5]))


@pytest.mark.parametrize("backend", ["cpu"] + DEVICE_BACKENDS)
def test_the_raw_average_op_refuses_destinations_without_sources(backend):
    """The op itself, not only the wrapper: an average of no models is refused on every backend
    (the CUDA kernel read weights[0] and the table row past the end)."""
    device = "cpu" if backend == "cpu" else DEVICE
    op = torch.ops.datadiet.average_triton if backend == "triton" else torch.ops.datadiet.average_
    dst = [torch.ones(70_000, device=device)]
    with pytest.raises(ValueError, match=r"average_: needs at least one source model for 1 destination tensors"):
        op(dst, [], [])
    with pytest.raises(ValueError, match=r"average_: got 2 weights for 1 models"):
        op(dst, [torch.zeros(70_000, device=device)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"average_: sources\[0\] \(model 0, tensor 0\)"):
        op(dst, [torch.zeros(10, device=device)], [1.0])  # a shorter source: read out of bounds before
    assert torch.equal(dst[0].cpu(), torch.ones(70_000))
