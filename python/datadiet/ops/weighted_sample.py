"""``weighted_sample``: k indices drawn without replacement with probability proportional to
non-negative weights, reproducible from a seed on every backend.

Each element gets the key ``E_i / w_i`` with ``E_i = -log(u_i)`` and ``u_i`` from counter-based
Philox (element i, seed); the k smallest keys are the sample, in draw order (Efraimidis &
Spirakis). Keys are computed with the same float32 operations in the same order on CPU, CUDA,
Triton and the reference, so one seed gives one sample everywhere
(``csrc/ops/select/select_math.h``).
"""

from __future__ import annotations

from typing import Optional, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.ops._args import IntSeqLike, as_int64
from datadiet.ops._segments import IntsLike, segments
from datadiet.reference.select import weighted_sample_reference

_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def weighted_sample(
    weights: torch.Tensor,
    k: IntsLike,
    *,
    seed: int,
    offsets: Optional[IntSeqLike] = None,
    groups: Optional[torch.Tensor] = None,
    check_values: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``k`` indices (int64) sampled without replacement, each draw proportional to ``weights``.

    Layouts as in ``topk_select`` (1-D, ``[B, n]`` rows, ``offsets`` or ``groups``; each segment
    is sampled independently). Indices come in draw order: the first j of a k-sample are a
    j-sample. No limit on n (``torch.multinomial`` stops at 2^24 categories).

    Args:
        weights: finite, >= 0; float32, float16, bfloat16 (float64 is rounded to float32).
            Zero weights are never drawn; ``k`` above a segment's positive-weight count is an error.
        seed: any Python int (taken modulo 2^64). Same seed, same sample, on every backend.
        check_values: verify weights and positive counts before launching (on CUDA one host
            sync; the CPU kernel always checks). Unchecked bad weights give an unspecified sample.
        backend: ``"auto" | "cpu" | "cuda" | "triton" | "torch"``.

    Resolution: uniforms have 24 bits and keys are float32, so two elements of equal weight
    tie with probability about 2^-24; a tie goes to the lower index.
    """
    if isinstance(weights, torch.Tensor) and weights.dtype == torch.float64:
        weights = weights.float()
    if isinstance(weights, torch.Tensor) and weights.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"datadiet.weighted_sample: weights must be float32, float16 or bfloat16, got {weights.dtype}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"datadiet.weighted_sample: seed must be an int, got {seed!r}")
    seg = segments("weighted_sample", "weights", weights, k, offsets, groups)
    chosen = resolve(backend, weights.device, "weighted_sample")
    if check_values and chosen != "cpu" and not torch.compiler.is_compiling():
        check_weights(seg.values, seg.offsets, seg.ks)
    args = (seg.values, seg.offsets, seg.ks, as_int64(seed))
    if chosen in ("cpu", "cuda"):
        out = torch.ops.datadiet.weighted_sample(*args)
    elif chosen == "triton":
        out = torch.ops.datadiet.weighted_sample_triton(*args)
    else:
        out = weighted_sample_reference(*args)
    return seg.finish(out)


def check_weights(weights: torch.Tensor, offsets: list[int], ks: list[int]) -> None:
    """The CPU kernel's value checks, in torch: finite, >= 0, enough positive weights."""
    w = weights.float()
    bad = ~(torch.isfinite(w) & (w >= 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"datadiet.weighted_sample: weights must be finite and >= 0, got weights[{i}] = {float(w[i])}")
    running = torch.cat([w.new_zeros(1, dtype=torch.int64), (w > 0).long().cumsum(0)])
    at = running[torch.tensor(offsets, device=w.device)]
    positive = at[1:] - at[:-1]
    for g, (kg, p) in enumerate(zip(ks, positive.long().tolist())):
        if kg > p:
            raise ValueError(f"datadiet.weighted_sample: k = {kg} for segment {g} but only {p} of its weights are "
                             "positive; zero weights are never drawn")


def _fake(weights: torch.Tensor, offsets: list[int], ks: list[int], seed: int) -> torch.Tensor:
    return weights.new_empty((sum(ks),), dtype=torch.int64)


@torch.library.custom_op("datadiet::weighted_sample_triton", mutates_args=())
def _weighted_sample_triton(weights: torch.Tensor, offsets: list[int], ks: list[int], seed: int) -> torch.Tensor:
    from datadiet.kernels import weighted_sample as kernel

    return cast(torch.Tensor, kernel.weighted_sample(weights, offsets, ks, seed))


_weighted_sample_triton.register_fake(_fake)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::weighted_sample")(_fake)
