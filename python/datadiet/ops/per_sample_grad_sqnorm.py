"""``per_sample_grad_sqnorm``: the squared Frobenius norm of each sample's weight gradient of a
linear map, ``‖G_iᵀ A_i‖²_F``, without forming the gradient.

For a layer ``y = x Wᵀ`` applied to T rows per sample (tokens, or convolution patches from
``unfold``), ``A_i`` [T, d] are sample i's input rows and ``G_i`` [T, p] the loss gradient at its
output rows, so ``∇W_i = G_iᵀ A_i`` [p, d]. The kernels build it tile by tile in registers or
shared memory and keep only squared sums: no ``B × p × d`` gradients and no ``B × T × T`` Gram
matrices are written. ``groups`` splits d and p into that many equal blocks and sums the norms
of the block-diagonal gradients (grouped and depthwise convolutions).

``per_sample_conv_grad_sqnorm`` is the same for a 2-D convolution, with A its unfolded input:
the kernels gather the patches from the input while they pack a tile, so the unfold
(kh · kw times the input) is never materialised either.
"""

from __future__ import annotations

from typing import NoReturn, Sequence, Union, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.reference.grad_norm import per_sample_conv_grad_sqnorm_reference, per_sample_grad_sqnorm_reference

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
IntOrPair = Union[int, Sequence[int]]  # an int or a pair of ints, as nn.Conv2d takes them


def per_sample_grad_sqnorm(a: torch.Tensor, g: torch.Tensor, *, groups: int = 1,
                           backend: str = "auto") -> torch.Tensor:
    """``out[i] = Σ_k ‖G_{i,k}ᵀ A_{i,k}‖²_F`` over the ``groups`` blocks k of the last dimensions.

    Args:
        a: ``[B, T, d]`` inputs; ``g``: ``[B, T, p]`` output gradients; one dtype (float32,
            float64, float16 or bfloat16), one device, any strides.
        groups: k >= 1 dividing d and p; block k pairs ``a[..., k·d/groups:(k+1)·d/groups]``
            with the matching block of ``g``.
        backend: ``"auto" | "cpu" | "cuda" | "triton" | "torch"`` (see ``datadiet.backends``).

    Returns ``[B]`` float32 (float64 for float64 inputs, the accumulation dtype). Empty T, d
    or p give zeros. Not differentiable.
    """
    _check(a, g, groups)
    chosen = resolve(backend, a.device, "per_sample_grad_sqnorm")
    if chosen in ("cpu", "cuda"):
        return cast(torch.Tensor, torch.ops.datadiet.per_sample_grad_sqnorm(a, g, int(groups)))
    if chosen == "triton":
        return cast(torch.Tensor, torch.ops.datadiet.per_sample_grad_sqnorm_triton(a, g, int(groups)))
    return per_sample_grad_sqnorm_reference(a, g, int(groups))


def _check(a: torch.Tensor, g: torch.Tensor, groups: int) -> None:
    _check_tensors("per_sample_grad_sqnorm", "a", a, g, groups, 3, "[B, T, d]", "[B, T, p]")
    if a.shape[:2] != g.shape[:2]:
        raise ValueError(f"datadiet.per_sample_grad_sqnorm: a {tuple(a.shape)} and g {tuple(g.shape)} must agree in "
                         "B and T")
    if a.shape[2] % groups or g.shape[2] % groups:
        raise ValueError(f"datadiet.per_sample_grad_sqnorm: groups={groups} must divide d={a.shape[2]} and "
                         f"p={g.shape[2]}")


def _check_tensors(op: str, name: str, a: torch.Tensor, g: torch.Tensor, groups: int, dims: int, a_shape: str,
                   g_shape: str) -> None:
    """Types, ranks, dtypes, device and groups of (``name`` = a, g), errors naming the argument."""
    def fail(msg: str, exc: type[Exception] = ValueError) -> NoReturn:
        raise exc(f"datadiet.{op}: {msg}")

    for label, t in ((name, a), ("g", g)):
        if not isinstance(t, torch.Tensor):
            fail(f"{label} must be a tensor, got {type(t).__name__}", TypeError)
    if a.dim() != dims or g.dim() != dims:
        fail(f"{name} must be {a_shape} and g {g_shape}, got shapes {tuple(a.shape)} and {tuple(g.shape)}")
    if a.dtype not in _DTYPES:
        fail(f"{name} must be float32, float64, float16 or bfloat16, got {a.dtype}", TypeError)
    if g.dtype != a.dtype:
        fail(f"g ({g.dtype}) must have {name}'s dtype ({a.dtype})", TypeError)
    if g.device != a.device:
        fail(f"g is on {g.device} but {name} is on {a.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        fail(f"groups must be an int >= 1, got {groups!r}")


def per_sample_conv_grad_sqnorm(x: torch.Tensor, g: torch.Tensor, kernel_size: IntOrPair, *, stride: IntOrPair = 1,
                                padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                                backend: str = "auto") -> torch.Tensor:
    """``per_sample_grad_sqnorm(A, G, groups)`` of a ``Conv2d`` without materialising A.

    A = ``F.unfold(x, kernel_size, dilation, padding, stride).transpose(1, 2)`` (zero padding,
    symmetric per dim; pad other modes with ``F.pad`` first) and G = ``g`` with its spatial dims
    flattened, so ``out[i]`` is the squared norm of sample i's weight gradient.

    Args:
        x: ``[B, C, H, W]`` input; ``g``: ``[B, O, Ho, Wo]`` gradient at the output, Ho / Wo the
            convolution's output size; one dtype and device; any strides for x, g contiguous or
            channels-last (its spatial dims must flatten to one stride).
        kernel_size, stride, padding, dilation: an int or a pair each, as ``nn.Conv2d`` takes them.
        groups: the convolution's groups (dividing C and O).
    """
    pairs = (_pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding"),
             _pair(dilation, "dilation"))
    _check_conv(x, g, groups, *pairs)
    chosen = resolve(backend, x.device, "per_sample_conv_grad_sqnorm")
    if chosen in ("cpu", "cuda"):
        return cast(torch.Tensor, torch.ops.datadiet.per_sample_conv_grad_sqnorm(x, g, *pairs, int(groups)))
    if chosen == "triton":
        return cast(torch.Tensor, torch.ops.datadiet.per_sample_conv_grad_sqnorm_triton(x, g, *pairs, int(groups)))
    return per_sample_conv_grad_sqnorm_reference(x, g, *pairs, int(groups))


def _pair(v: IntOrPair, name: str) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        out = [v, v]
    elif isinstance(v, (tuple, list)):
        out = list(v)
    else:  # a bool, a string, anything else
        out = []
    if len(out) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) for e in out):
        raise ValueError(f"datadiet.per_sample_conv_grad_sqnorm: {name} must be an int or a pair of ints, got {v!r}")
    return out


def _check_conv(x: torch.Tensor, g: torch.Tensor, groups: int, kernel_size: list[int], stride: list[int],
                padding: list[int], dilation: list[int]) -> None:
    """Everything the kernels need, for every backend (the Triton one reads without bounds)."""
    _check_tensors("per_sample_conv_grad_sqnorm", "x", x, g, groups, 4, "[B, C, H, W]", "[B, O, Ho, Wo]")

    def fail(msg: str) -> NoReturn:
        raise ValueError(f"datadiet.per_sample_conv_grad_sqnorm: {msg}")

    if g.shape[0] != x.shape[0]:
        fail(f"x {tuple(x.shape)} and g {tuple(g.shape)} must agree in B")
    if min(kernel_size + stride + dilation) < 1 or min(padding) < 0:
        fail(f"kernel_size, stride and dilation must be >= 1 and padding >= 0, got {kernel_size}, {stride}, "
             f"{dilation}, {padding}")
    if x.shape[1] % groups or g.shape[1] % groups:
        fail(f"groups={groups} must be >= 1 and divide C={x.shape[1]} and O={g.shape[1]}")
    out = []
    for size, k, s, p, d in zip(x.shape[2:], kernel_size, stride, padding, dilation):
        if size + 2 * p < d * (k - 1) + 1:
            fail(f"the input {tuple(x.shape[2:])} (padded by {padding}) is smaller than the dilated kernel "
                 f"{kernel_size} (dilation {dilation})")
        out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
    if tuple(g.shape[2:]) != tuple(out):
        fail(f"g must have spatial shape {out} for this x and geometry, got {tuple(g.shape)}")
    if 1 not in out and g.stride(2) != out[1] * g.stride(3):
        fail(f"g's spatial dims must flatten to one stride (contiguous or channels-last), got strides {g.stride()}")


def _fake(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    return a.new_empty((a.shape[0],), dtype=torch.float64 if a.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("datadiet::per_sample_grad_sqnorm_triton", mutates_args=())
def _per_sample_grad_sqnorm_triton(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    from datadiet.kernels import per_sample_grad_sqnorm as kernel

    return cast(torch.Tensor, kernel.per_sample_grad_sqnorm(a, g, groups))


_per_sample_grad_sqnorm_triton.register_fake(_fake)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::per_sample_grad_sqnorm")(_fake)


def _fake_conv(x: torch.Tensor, g: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               dilation: list[int], groups: int) -> torch.Tensor:
    return _fake(x, g, groups)


@torch.library.custom_op("datadiet::per_sample_conv_grad_sqnorm_triton", mutates_args=())
def _per_sample_conv_grad_sqnorm_triton(x: torch.Tensor, g: torch.Tensor, kernel_size: list[int], stride: list[int],
                                        padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    from datadiet.kernels import per_sample_grad_sqnorm as kernel

    return cast(torch.Tensor, kernel.per_sample_conv_grad_sqnorm(x, g, kernel_size, stride, padding, dilation, groups))


_per_sample_conv_grad_sqnorm_triton.register_fake(_fake_conv)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::per_sample_conv_grad_sqnorm")(_fake_conv)
