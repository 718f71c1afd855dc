"""``per_sample_grad_sqnorm``: the squared Frobenius norm of each sample's weight gradient of a
linear map, ``‖G_iᵀ A_i‖²_F``, without forming the gradient.

For a layer ``y = x Wᵀ`` applied to T rows per sample (tokens, or convolution patches from
``unfold``), ``A_i`` [T, d] are sample i's input rows and ``G_i`` [T, p] the loss gradient at its
output rows, so ``∇W_i = G_iᵀ A_i`` [p, d]. The kernels build it tile by tile in registers or
shared memory and keep only squared sums: no ``B × p × d`` gradients and no ``B × T × T`` Gram
matrices are written. ``groups`` splits d and p into that many equal blocks and sums the norms
of the block-diagonal gradients (grouped and depthwise convolutions).
"""

from __future__ import annotations

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.reference.grad_norm import per_sample_grad_sqnorm_reference

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
        return torch.ops.datadiet.per_sample_grad_sqnorm(a, g, int(groups))
    if chosen == "triton":
        return torch.ops.datadiet.per_sample_grad_sqnorm_triton(a, g, int(groups))
    return per_sample_grad_sqnorm_reference(a, g, int(groups))


def _check(a, g, groups) -> None:
    def fail(msg: str, exc=ValueError):
        raise exc(f"datadiet.per_sample_grad_sqnorm: {msg}")

    for name, t in (("a", a), ("g", g)):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} must be a tensor, got {type(t).__name__}", TypeError)
    if a.dim() != 3 or g.dim() != 3:
        fail(f"a must be [B, T, d] and g [B, T, p], got shapes {tuple(a.shape)} and {tuple(g.shape)}")
    if a.shape[:2] != g.shape[:2]:
        fail(f"a {tuple(a.shape)} and g {tuple(g.shape)} must agree in B and T")
    if a.dtype not in _DTYPES:
        fail(f"a must be float32, float64, float16 or bfloat16, got {a.dtype}", TypeError)
    if g.dtype != a.dtype:
        fail(f"g ({g.dtype}) must have a's dtype ({a.dtype})", TypeError)
    if g.device != a.device:
        fail(f"g is on {g.device} but a is on {a.device}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        fail(f"groups must be an int >= 1, got {groups!r}")
    if a.shape[2] % groups or g.shape[2] % groups:
        fail(f"groups={groups} must divide d={a.shape[2]} and p={g.shape[2]}")


def _fake(a, g, groups):
    return a.new_empty((a.shape[0],), dtype=torch.float64 if a.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("datadiet::per_sample_grad_sqnorm_triton", mutates_args=())
def _per_sample_grad_sqnorm_triton(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    from datadiet.kernels import per_sample_grad_sqnorm as kernel

    return kernel.per_sample_grad_sqnorm(a, g, groups)


_per_sample_grad_sqnorm_triton.register_fake(_fake)
if _extension.compiled_cpu():
    torch.library.register_fake("datadiet::per_sample_grad_sqnorm")(_fake)
