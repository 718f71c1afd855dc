"""per_sample_grad_sqnorm: the fused kernels (CPU, Triton — the interpreter without a GPU — and
CUDA on a GPU) against the float64 bmm reference over shapes (empty, one row, ragged tiles,
large), dtypes, groups, non-contiguous inputs; argument errors; opcheck and torch.compile."""

import pytest
import torch
from conftest import DEVICE_BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

from datadiet.ops import per_sample_grad_sqnorm
from datadiet.reference.grad_norm import per_sample_grad_sqnorm_reference

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (B, T, d, p, groups): empty batch / T / d, one row, tile edges (4, 16, 32, 64 ± 1), grouped, depthwise.
SHAPES = [(0, 3, 4, 5, 1), (3, 0, 4, 5, 1), (2, 3, 0, 0, 1), (1, 1, 1, 1, 1), (1, 5, 7, 3, 1), (4, 17, 33, 65, 1),
          (3, 31, 64, 64, 1), (2, 9, 12, 8, 4), (2, 25, 9 * 6, 6, 6), (5, 300, 20, 12, 2)]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def case(B, T, d, p, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, T, d, generator=g).to(dtype).to(device)
    grad = torch.randn(B, T, p, generator=g).to(dtype).to(device)
    return a, grad


def exact(a, g, groups):
    """The float64 oracle on the inputs as given (rounded to their dtype)."""
    return per_sample_grad_sqnorm_reference(a.double(), g.double(), groups)


def assert_matches(out, a, g, groups, rtol):
    want = exact(a, g, groups)
    assert out.dtype == (torch.float64 if a.dtype == torch.float64 else torch.float32)
    assert out.shape == (a.shape[0],)
    torch.testing.assert_close(out.double().cpu(), want.cpu(), rtol=rtol, atol=rtol * float(want.abs().amax()) if want.numel() else 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_and_reference_match_float64(shape, dtype):
    B, T, d, p, groups = shape
    a, g = case(B, T, d, p, dtype, seed=sum(shape))
    for backend in ("cpu", "torch"):
        assert_matches(per_sample_grad_sqnorm(a, g, groups=groups, backend=backend), a, g, groups, TOL[dtype])


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_device_backends_match_float64(backend, dtype):
    device = "cuda" if ON_GPU else "cpu"
    shapes = SHAPES if ON_GPU else SHAPES[:9]  # the interpreter is slow
    if ON_GPU:
        shapes = shapes + [(32, 256, 576, 64, 1), (8, 3136, 147, 64, 1), (4, 49, 960 * 9, 960, 960)]
    for B, T, d, p, groups in shapes:
        a, g = case(B, T, d, p, dtype, seed=B + T + d, device=device)
        assert_matches(per_sample_grad_sqnorm(a, g, groups=groups, backend=backend), a, g, groups, TOL[dtype])


def test_large_rows_and_columns_cpu():
    # Several T chunks (256) and row items (64) per sample, float32 against float64.
    a, g = case(2, 700, 150, 130, torch.float32, seed=3)
    assert_matches(per_sample_grad_sqnorm(a, g), a, g, 1, 1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch", *DEVICE_BACKENDS])
def test_non_contiguous_inputs(backend):
    device = "cuda" if ON_GPU and backend in ("cuda", "triton") else "cpu"
    base_a, base_g = case(3, 10, 24, 16, torch.float32, seed=5, device=device)
    a = base_a.transpose(1, 2).contiguous().transpose(1, 2)  # column-major rows
    g = base_g[:, :, ::2]  # strided columns
    want = per_sample_grad_sqnorm(a.contiguous(), g.contiguous(), groups=2, backend="torch")
    torch.testing.assert_close(per_sample_grad_sqnorm(a, g, groups=2, backend=backend), want, rtol=1e-5, atol=1e-4)
    expanded = base_a[:1].expand(3, -1, -1)  # stride 0 over the batch
    torch.testing.assert_close(per_sample_grad_sqnorm(expanded, base_g, backend=backend),
                               per_sample_grad_sqnorm(expanded.contiguous(), base_g, backend="torch"), rtol=1e-5,
                               atol=1e-4)


def test_equals_the_norm_of_the_autograd_weight_gradient():
    # Linear on [B, T, d]: the per-sample weight gradient autograd builds for one sample at a time.
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4, bias=False).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    out = layer(x)
    g = torch.randn_like(out)
    want = []
    for i in range(3):
        (w,) = torch.autograd.grad(layer(x[i:i + 1]), layer.weight, g[i:i + 1])
        want.append(w.square().sum())
    torch.testing.assert_close(per_sample_grad_sqnorm(x, g), torch.stack(want))


def test_deterministic_across_calls():
    a, g = case(4, 513, 70, 129, torch.float32, seed=11)
    first = per_sample_grad_sqnorm(a, g)
    assert all(torch.equal(first, per_sample_grad_sqnorm(a, g)) for _ in range(3))


@pytest.mark.parametrize("bad, message", [
    (lambda a, g: (a[0], g, 1), "a must be \\[B, T, d\\]"),
    (lambda a, g: (a, g[:2], 1), "must agree in B and T"),
    (lambda a, g: (a.int(), g.int(), 1), "float32, float64, float16 or bfloat16"),
    (lambda a, g: (a, g.double(), 1), "must have a's dtype"),
    (lambda a, g: (a, g, 0), "groups must be an int >= 1"),
    (lambda a, g: (a, g, 4), "groups=4 must divide d=6 and p=4"),
    (lambda a, g: (a, "g", 1), "g must be a tensor"),
])
def test_argument_errors(bad, message):
    a, g = case(3, 5, 6, 4, torch.float32, seed=1)
    x, y, groups = bad(a, g)
    with pytest.raises((ValueError, TypeError), match=message):
        per_sample_grad_sqnorm(x, y, groups=groups)


def test_compiled_kernel_checks_arguments_too():
    a, g = case(3, 5, 6, 4, torch.float32, seed=1)
    with pytest.raises(ValueError, match="datadiet.per_sample_grad_sqnorm: groups=4 must divide"):
        torch.ops.datadiet.per_sample_grad_sqnorm(a, g, 4)


def test_opcheck_and_compile():
    a, g = case(3, 7, 6, 4, torch.float32, seed=2)
    for args in [(a, g, 1), (a, g, 2), (a.double(), g.double(), 1), (a.half(), g.half(), 2)]:
        torch.library.opcheck(torch.ops.datadiet.per_sample_grad_sqnorm.default, args)
    fn = torch.compile(lambda x, y: per_sample_grad_sqnorm(x, y, groups=2).sqrt().argmax(), fullgraph=True)
    assert fn(a, g) == per_sample_grad_sqnorm(a, g, groups=2).sqrt().argmax()


@settings(max_examples=40, deadline=None)
@given(B=st.integers(0, 4), T=st.integers(0, 40), dg=st.integers(0, 40), pg=st.integers(0, 40),
       groups=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_property_cpu_matches_float64(B, T, dg, pg, groups, seed):
    a, g = case(B, T, dg * groups, pg * groups, torch.float32, seed=seed)
    assert_matches(per_sample_grad_sqnorm(a, g, groups=groups, backend="cpu"), a, g, groups, 1e-5)


# -- per_sample_conv_grad_sqnorm: patches gathered inside the kernel -------------------------------

from datadiet.ops import per_sample_conv_grad_sqnorm  # noqa: E402
from datadiet.reference.grad_norm import per_sample_conv_grad_sqnorm_reference  # noqa: E402

# (C, O, kernel, stride, padding, dilation, groups, H, W)
CONVS = [(3, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, 7, 8), (4, 6, (3, 3), (2, 2), (0, 0), (2, 2), 2, 9, 9),
         (4, 8, (2, 3), (1, 2), (1, 0), (1, 1), 4, 6, 7), (8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8, 5, 5),
         (16, 40, (1, 1), (2, 2), (0, 0), (1, 1), 1, 6, 6), (2, 3, (1, 5), (1, 1), (0, 2), (1, 1), 1, 1, 9),
         (5, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1, 12, 11)]


def conv_case(C, O, kernel, stride, padding, dilation, groups, H, W, dtype, seed, device="cpu"):
    conv = torch.nn.Conv2d(C, O, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, C, H, W, generator=g)
    out_shape = conv(x).shape
    grad = torch.randn(out_shape, generator=g)
    return x.to(dtype).to(device), grad.to(dtype).to(device)


@pytest.mark.parametrize("backend", ["cpu", "torch", *DEVICE_BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", CONVS, ids=str)
def test_conv_form_matches_the_unfolded_float64(geometry, dtype, backend):
    if backend == "torch" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("the reference unfolds half types on CPU only for float32 and up")
    device = "cuda" if ON_GPU and backend in ("cuda", "triton") else "cpu"
    C, O, kernel, stride, padding, dilation, groups, H, W = geometry
    x, g = conv_case(*geometry, dtype, seed=C + O, device=device)
    out = per_sample_conv_grad_sqnorm(x, g, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                      backend=backend)
    want = per_sample_conv_grad_sqnorm_reference(x.double(), g.double(), kernel, stride, padding, dilation, groups)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double().cpu(), want.cpu(), rtol=TOL[dtype], atol=0)


@pytest.mark.parametrize("backend", ["cpu", *DEVICE_BACKENDS])
def test_conv_form_strided_and_channels_last(backend):
    device = "cuda" if ON_GPU and backend in ("cuda", "triton") else "cpu"
    x, g = conv_case(6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2, 8, 8, torch.float32, seed=3, device=device)
    want = per_sample_conv_grad_sqnorm(x, g, 3, padding=1, groups=2, backend="torch")
    wide = torch.zeros(3, 6, 8, 16, device=device)
    wide[..., ::2] = x
    for xv, gv in ((wide[..., ::2], g), (x.contiguous(memory_format=torch.channels_last),
                                         g.contiguous(memory_format=torch.channels_last))):
        torch.testing.assert_close(per_sample_conv_grad_sqnorm(xv, gv, 3, padding=1, groups=2, backend=backend), want,
                                   rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "torch", *DEVICE_BACKENDS])
def test_conv_form_errors(backend):
    device = "cuda" if ON_GPU and backend in ("cuda", "triton") else "cpu"
    x, g = conv_case(4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, 6, 6, torch.float32, seed=1, device=device)
    cases = [((x, g[:, :, :5], 3), dict(padding=1, groups=2), r"g must have spatial shape \[6, 6\]"),
             ((x, g[:2], 3), dict(padding=1, groups=2), "must agree in B"),
             ((x, g, 3), dict(padding=1, groups=4), "groups=4 must be >= 1 and divide C=4 and O=6"),
             ((x, g, (3, 3, 3)), dict(padding=1), "kernel_size must be an int or a pair"),
             ((x, g, 3), dict(padding=1, stride=True), "stride must be an int or a pair of ints, got True"),
             ((x, g, "33"), dict(padding=1), "kernel_size must be an int or a pair of ints, got '33'"),
             ((x, g.transpose(2, 3), 3), dict(padding=1, groups=2), "flatten to one stride"),
             ((x, g, 3), dict(padding=1, stride=0, groups=2), "stride and dilation must be >= 1"),
             ((x[:, :, :2, :2], g, 3), dict(stride=2, groups=2), "smaller than the dilated kernel"),
             ((x, g.double(), 3), dict(padding=1, groups=2), "must have x's dtype")]
    for args, kwargs, message in cases:
        with pytest.raises(TypeError if "dtype" in message else ValueError, match=message):
            per_sample_conv_grad_sqnorm(*args, **kwargs, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "torch", *DEVICE_BACKENDS])
def test_conv_form_with_one_output_column_and_permuted_gradient(backend):
    device = "cuda" if ON_GPU and backend in ("cuda", "triton") else "cpu"
    x, _ = conv_case(3, 5, (3, 1), (1, 1), (1, 0), (1, 1), 1, 7, 1, torch.float32, seed=2, device=device)
    g = torch.randn(3, 7, 5, 1, device=device).permute(0, 2, 1, 3)  # [B, O, Ho, 1], O innermost
    want = per_sample_conv_grad_sqnorm_reference(x.double(), g.double(), [3, 1], [1, 1], [1, 0], [1, 1], 1)
    got = per_sample_conv_grad_sqnorm(x, g, (3, 1), padding=(1, 0), backend=backend)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-5, atol=0)


def test_conv_form_opcheck():
    x, g = conv_case(4, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, 6, 6, torch.float32, seed=1)
    for args in [(x, g, [3, 3], [1, 1], [1, 1], [1, 1], 2), (x.double(), g.double(), [3, 3], [1, 1], [1, 1], [1, 1], 1)]:
        torch.library.opcheck(torch.ops.datadiet.per_sample_conv_grad_sqnorm.default, args)
