"""average_, lerp_ and magnitude_prune_ against their float32 / stable-sort references over dtypes,
list shapes (empty tensors, one element, ragged chunks, non-contiguous), scopes, densities and
ties; the integer and float64 rules; errors; opcheck and fakes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.ops import average_, lerp_, magnitude_prune_
from datadiet.reference import magnitude_prune_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(0,), (1,), (3, 5), (70_001,), (64, 3, 3, 3)]


def model(seed, dtype=torch.float32, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def clone(ts):
    return [t.clone() for t in ts]


def tol(dtype):
    return {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_average_matches_float32_sum(dtype, backend):
    models = [model(s, dtype) for s in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]
    dst = [torch.empty_like(t) for t in models[0]]
    average_(dst, models, weights, backend=backend)
    for t, d in enumerate(dst):
        want = sum(w * m[t].double() for w, m in zip(weights, models))
        torch.testing.assert_close(d.double(), want.to(dtype).double(), rtol=tol(dtype), atol=tol(dtype))
    uniform = [torch.empty_like(t) for t in models[0]]
    average_(uniform, models, backend=backend)
    for t, u in enumerate(uniform):
        want = torch.stack([m[t].float() for m in models]).mean(0)
        torch.testing.assert_close(u.float(), want.to(dtype).float(), rtol=tol(dtype), atol=tol(dtype))


def test_cpu_kernel_equals_reference_bit_for_bit_in_float32():
    models = [model(s) for s in range(3)]
    a, b = [torch.empty_like(t) for t in models[0]], [torch.empty_like(t) for t in models[0]]
    average_(a, models, [0.5, 0.25, 0.25], backend="cpu")
    average_(b, models, [0.5, 0.25, 0.25], backend="torch")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_average_into_one_of_its_sources_and_non_contiguous():
    models = [model(s) for s in range(3)]
    want = [sum(m[t] for m in models) / 3 for t in range(len(SHAPES))]
    average_(models[1], models, backend="cpu")  # dst aliases a source
    for w, got in zip(want, models[1]):
        torch.testing.assert_close(got, w, rtol=1e-6, atol=1e-6)
    base = torch.randn(6, 8)
    dst, srcs = base.t(), [torch.randn(6, 8).t() for _ in range(2)]  # non-contiguous
    average_([dst], [[s] for s in srcs], [1.0, 2.0])
    torch.testing.assert_close(base.t(), srcs[0] + 2 * srcs[1])


def test_lerp_and_running_mean():
    a, b = model(1), model(2)
    x = clone(a)
    lerp_(x, b, 0.25)
    for xa, ya, yb in zip(x, a, b):
        torch.testing.assert_close(xa, ya + 0.25 * (yb - ya), rtol=1e-6, atol=1e-6)
    models = [model(s, shapes=[(7, 3)]) for s in range(5)]
    running = clone(models[0])
    for n, m in enumerate(models[1:], start=1):
        lerp_(running, m, 1.0 / (n + 1))
    torch.testing.assert_close(running[0], torch.stack([m[0] for m in models]).mean(0), rtol=1e-5, atol=1e-6)


def test_integer_and_float64_tensors_follow_the_documented_rules():
    counts = [torch.tensor(10), torch.tensor(13), torch.tensor(20)]
    dst = [torch.tensor(0), torch.zeros(3, dtype=torch.float64)]
    doubles = [torch.randn(3, dtype=torch.float64) for _ in range(3)]
    average_(dst, [[c, d] for c, d in zip(counts, doubles)], [0.5, 0.25, 0.25])
    assert int(dst[0]) == round((0.5 * 10 + 0.25 * 13 + 0.25 * 20) / 1.0)  # 13.25 -> 13
    torch.testing.assert_close(dst[1], 0.5 * doubles[0] + 0.25 * doubles[1] + 0.25 * doubles[2])
    x = [torch.tensor(4)]
    lerp_(x, [torch.tensor(9)], 0.5)
    assert int(x[0]) == 6  # 6.5 rounds half to even


def test_params_that_require_grad_are_updated_without_autograd_errors():
    lin = torch.nn.Linear(3, 2)
    other = torch.nn.Linear(3, 2)
    lerp_(list(lin.parameters()), list(other.parameters()), 1.0)
    torch.testing.assert_close(lin.weight, other.weight) and lin.weight.requires_grad


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda a, b: average_(a, [], None), ValueError, r"sources is empty"),
    (lambda a, b: average_(a, [a, b], [1.0]), ValueError, r"got 1 weights for 2 models"),
    (lambda a, b: average_(a, [a, b], [1.0, -1.0]), ValueError, r"weights must be finite with a positive sum"),
    (lambda a, b: average_(a, [a, b], [float("nan"), 1.0]), ValueError, r"finite with a positive sum"),
    (lambda a, b: average_(a, [a, b[:1]], None), ValueError, r"sources\[1\] has 1 tensors but dst has 2"),
    (lambda a, b: average_(a, [a, [b[0], b[1].t()]], None), ValueError,
     r"sources\[1\]\[1\] is \(4, 2\) torch.float32 on cpu but dst\[1\] is \(2, 4\)"),
    (lambda a, b: average_(a, [a, [b[0], b[1].half()]], None), ValueError, r"torch.float16 on cpu but dst\[1\]"),
    (lambda a, b: average_(a[0], [a, b], None), TypeError, r"dst must be a sequence of tensors"),
    (lambda a, b: lerp_(a, b, float("inf")), ValueError, r"alpha must be finite"),
    (lambda a, b: lerp_([torch.zeros(2, dtype=torch.bool)], [torch.ones(2, dtype=torch.bool)], 0.5), TypeError,
     r"bool tensor"),
    (lambda a, b: magnitude_prune_(a, 0.0), ValueError, r"density must be in \(0, 1\], got 0.0"),
    (lambda a, b: magnitude_prune_(a, 1.5), ValueError, r"density must be in \(0, 1\], got 1.5"),
    (lambda a, b: magnitude_prune_(a, 0.5, scope="layer"), ValueError, r"scope must be 'global' or 'tensor'"),
    (lambda a, b: magnitude_prune_([torch.ones(3, dtype=torch.long)], 0.5), TypeError, r"must be floating point"),
    (lambda a, b: average_(a, [a, b], None, backend="cuda"), ValueError, r"backend=.cuda. is unavailable: "),
])
def test_bad_arguments(call, exc, pattern):
    a, b = [torch.randn(3), torch.randn(2, 4)], [torch.randn(3), torch.randn(2, 4)]
    with pytest.raises(exc, match=pattern):
        call(a, b)


def test_raw_op_checks_name_the_tensor():
    with pytest.raises(ValueError, match=r"average_: sources\[3\] \(model 1, tensor 1\) has shape \[5\]"):
        torch.ops.datadiet.average_([torch.zeros(2), torch.zeros(4)],
                                    [torch.zeros(2), torch.zeros(4), torch.zeros(2), torch.zeros(5)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"keep\[0\] = 9 must be in \[0, 8\]"):
        torch.ops.datadiet.magnitude_prune_([torch.zeros(2), torch.zeros(6)], [], [9])


def kept(masks):
    return sum(int(m.sum()) for m in masks)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("density", [1e-6, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_prune_equals_reference(dtype, scope, density):
    ts = model(3, dtype)
    ref = clone(ts)
    masks = magnitude_prune_(ts, density, scope=scope, backend="cpu")
    want = magnitude_prune_(ref, density, scope=scope, backend="torch")
    assert all(torch.equal(m, w) for m, w in zip(masks, want))
    assert all(torch.equal(t, r) for t, r in zip(ts, ref))
    sizes = [sum(t.numel() for t in ts)] if scope == "global" else [t.numel() for t in ts]
    assert kept(masks) == sum(n - round((1 - density) * n) for n in sizes)


def test_prune_ties_keep_the_lower_index_and_signed_zeros_are_equal():
    a = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])
    b = torch.tensor([-0.0, 2.0, 0.0, -2.0])
    masks = magnitude_prune_([a, b], 0.6)  # keep 6 of 10: the 2.0 magnitudes (6 of them) in index order
    assert masks[0].tolist() == [False, True, True, False, True, True]
    assert masks[1].tolist() == [False, True, False, True]
    masks = magnitude_prune_([torch.tensor([3.0, -0.0, 0.0, 0.0])], 0.5)
    assert masks[0].tolist() == [True, True, False, False]


def test_prune_many_ties_cross_chunks():
    x = torch.ones(300_000)
    x[::7] = 2.0
    masks = magnitude_prune_([x.clone(), x.clone()], 0.5)
    ref = [torch.empty(300_000, dtype=torch.bool) for _ in range(2)]
    magnitude_prune_reference([x.clone(), x.clone()], ref, [300_000])
    assert all(torch.equal(m, r) for m, r in zip(masks, ref))


def test_prune_nan_is_an_error_and_returns_no_masks_when_not_asked():
    x = torch.randn(10)
    x[4] = float("nan")
    with pytest.raises(ValueError, match=r"tensors\[1\] has a NaN at flat index 4"):
        magnitude_prune_([torch.randn(3), x], 0.5)
    z = torch.randn(100)  # the NaN inside a 16-lane block of the float32 path
    z[37] = float("nan")
    with pytest.raises(ValueError, match=r"tensors\[0\] has a NaN at flat index 37"):
        magnitude_prune_([z, torch.randn(5)], 0.5)
    y = torch.randn(100)
    assert magnitude_prune_([y], 0.3, return_masks=False) is None
    assert int((y != 0).sum()) == 30


def test_prune_float64_and_non_contiguous():
    x = torch.randn(20, 30, dtype=torch.float64)
    masks = magnitude_prune_([x], 0.25)
    assert kept(masks) == 150 and int((x != 0).sum()) == 150
    base = torch.randn(40, 50)
    view = base.t()
    masks = magnitude_prune_([view], 0.5)
    assert int((base != 0).sum()) == 1000 and torch.equal(masks[0], view != 0)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4), density=st.floats(0.01, 1.0),
       levels=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_prune_property(sizes, density, levels, seed):
    g = torch.Generator().manual_seed(seed)
    ts = [(torch.randint(-levels, levels + 1, (n,), generator=g) * 0.5).float() for n in sizes]
    ref = clone(ts)
    masks = magnitude_prune_(ts, density)
    want = [torch.empty(n, dtype=torch.bool) for n in sizes]
    magnitude_prune_reference(ref, want, [sum(sizes) - round((1 - density) * sum(sizes))])
    assert all(torch.equal(m, w) for m, w in zip(masks, want))


def test_opcheck():
    ts = model(5, shapes=[(40,), (3, 7)])
    masks = [torch.empty(t.shape, dtype=torch.bool) for t in ts]
    torch.library.opcheck(torch.ops.datadiet.magnitude_prune_.default, (clone(ts), masks, [20]))
    torch.library.opcheck(torch.ops.datadiet.lerp_.default, (clone(ts), model(6, shapes=[(40,), (3, 7)]), 0.3))
    torch.library.opcheck(torch.ops.datadiet.average_.default,
                          (clone(ts), model(6, shapes=[(40,), (3, 7)]) + model(7, shapes=[(40,), (3, 7)]), [0.5, 0.5]))
