"""Model-merging ops over lists of tensors (one model = one list, e.g. ``list(model.parameters())``):
``average_`` (weighted sum of M models in one fused pass), ``lerp_`` (between two models; with
``alpha = 1/(n+1)`` it folds a model into a running mean of n) and ``magnitude_prune_`` (global or
per-tensor one-shot magnitude pruning in a few streaming passes, no concatenated copy).

The kernels take float32, float16 and bfloat16 tensors and compute in float32. Other tensors
follow fixed rules here instead of failing: float64 tensors are computed in float64 with torch
ops; integer tensors (BatchNorm's ``num_batches_tracked``) get the weighted mean
``Σ w_m x_m / Σ w_m`` (``lerp_``: ``x + α(y − x)``) rounded to the nearest integer; ``magnitude_prune_``
takes floating tensors only. Non-contiguous tensors are computed on contiguous copies and
written back.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.reference.merge import average_reference, lerp_reference, magnitude_prune_reference

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.no_grad()
def average_(dst: Sequence[torch.Tensor], sources: Sequence[Sequence[torch.Tensor]],
             weights: Optional[Sequence[float]] = None, *, backend: str = "auto") -> None:
    """``dst[t] ← Σ_m weights[m] · sources[m][t]`` in place, for every tensor t of the models.

    Args:
        dst: T tensors (may be one of the sources' own tensors).
        sources: M models, each a sequence of T tensors matching ``dst`` in shape and dtype.
        weights: M finite weights with a positive sum (not normalised); default ``1/M`` each
            (a uniform soup).
    """
    dst = _tensor_list("average_", "dst", dst)
    models = [_tensor_list("average_", f"sources[{m}]", s) for m, s in enumerate(sources)]
    if not models:
        raise ValueError("datadiet.average_: sources is empty; need at least one model")
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    weights = [float(w) for w in weights]
    if len(weights) != len(models):
        raise ValueError(f"datadiet.average_: got {len(weights)} weights for {len(models)} models")
    if not all(math.isfinite(w) for w in weights) or not sum(weights) > 0:
        raise ValueError(f"datadiet.average_: weights must be finite with a positive sum, got {weights}")
    for m, model in enumerate(models):
        _check_pairs("average_", dst, model, f"sources[{m}]")
    kernel = [t for t, d in enumerate(dst) if d.dtype in _KERNEL_DTYPES]
    for t, d in enumerate(dst):
        if d.dtype not in _KERNEL_DTYPES:
            _average_other(d, [model[t] for model in models], weights)
    if not kernel:
        return
    chosen = _backend("average_", [dst[t] for t in kernel], backend)
    with _contiguous([dst[t] for t in kernel]) as out:
        _op("average_", chosen)(out, [model[t].contiguous() for model in models for t in kernel], weights)


@torch.no_grad()
def lerp_(dst: Sequence[torch.Tensor], other: Sequence[torch.Tensor], alpha: float, *, backend: str = "auto") -> None:
    """``dst[t] ← dst[t] + alpha · (other[t] − dst[t])`` in place (float32 arithmetic)."""
    dst = _tensor_list("lerp_", "dst", dst)
    other = _tensor_list("lerp_", "other", other)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"datadiet.lerp_: alpha must be finite, got {alpha}")
    _check_pairs("lerp_", dst, other, "other")
    kernel = [t for t, d in enumerate(dst) if d.dtype in _KERNEL_DTYPES]
    for t, d in enumerate(dst):
        if d.dtype not in _KERNEL_DTYPES:
            _average_other(d, [d.clone(), other[t]], [1.0 - alpha, alpha])
    if not kernel:
        return
    chosen = _backend("lerp_", [dst[t] for t in kernel], backend)
    with _contiguous([dst[t] for t in kernel]) as out:
        _op("lerp_", chosen)(out, [other[t].contiguous() for t in kernel], alpha)


@torch.no_grad()
def magnitude_prune_(tensors: Sequence[torch.Tensor], density: float, *, scope: str = "global",
                     return_masks: bool = True, backend: str = "auto") -> Optional[list[torch.Tensor]]:
    """Keeps the largest-magnitude fraction ``density`` of the weights and zeroes the rest, in place.

    The kept count is ``P − round((1 − density)·P)`` — exactly what
    ``torch.nn.utils.prune.global_unstructured(..., amount=1 − density)`` keeps — over all
    P weights of the list (``scope="global"``) or of each tensor (``scope="tensor"``). Equal
    magnitudes at the threshold are kept lower index first (list order, then flat index); -0
    equals +0. NaN weights are an error.

    Returns the boolean keep masks (the tensors' shapes) when ``return_masks``, else ``None`` (no
    memory beyond the kernel's histograms).
    """
    tensors = _tensor_list("magnitude_prune_", "tensors", tensors)
    density = float(density)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"datadiet.magnitude_prune_: density must be in (0, 1], got {density}")
    if scope not in ("global", "tensor"):
        raise ValueError(f"datadiet.magnitude_prune_: scope must be 'global' or 'tensor', got {scope!r}")
    for i, t in enumerate(tensors):
        if t.dtype not in _KERNEL_DTYPES + (torch.float64,):
            raise TypeError(f"datadiet.magnitude_prune_: tensors[{i}] must be floating point, got {t.dtype}")
    if not tensors:
        return [] if return_masks else None
    sizes = [sum(t.numel() for t in tensors)] if scope == "global" else [t.numel() for t in tensors]
    keep = [n - round((1.0 - density) * n) for n in sizes]  # prune's own rounding (Python's round)
    chosen = _backend("magnitude_prune_", tensors, backend)
    masks = [torch.empty(t.shape, dtype=torch.bool, device=t.device) for t in tensors] if return_masks else []
    if chosen != "cpu":
        _check_no_nan(tensors)
    if any(t.dtype == torch.float64 for t in tensors):
        chosen = "torch"
    with _contiguous(tensors) as out:
        _op("magnitude_prune_", chosen)(out, masks, keep)
    return masks if return_masks else None


def _check_no_nan(tensors: list[torch.Tensor]) -> None:
    """The CPU kernel's NaN check elsewhere: one sum per tensor (a NaN sum, or +inf + -inf, then
    pays for locating the NaN); one host synchronisation."""
    sums = torch.stack([t.sum(dtype=torch.float32) for t in tensors])
    for i in torch.isnan(sums).nonzero().flatten().tolist():
        bad = torch.isnan(tensors[i].reshape(-1)).nonzero()
        if bad.numel():
            raise ValueError(f"datadiet.magnitude_prune_: tensors[{i}] has a NaN at flat index {int(bad[0])}; "
                             "a NaN has no magnitude order")


def _tensor_list(op: str, name: str, ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(ts, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in ts):
        raise TypeError(f"datadiet.{op}: {name} must be a sequence of tensors (one model's), got {type(ts).__name__}")
    return list(ts)


def _check_pairs(op: str, dst: list[torch.Tensor], other: list[torch.Tensor], name: str) -> None:
    if len(other) != len(dst):
        raise ValueError(f"datadiet.{op}: {name} has {len(other)} tensors but dst has {len(dst)}")
    for t, (d, o) in enumerate(zip(dst, other)):
        if d.shape != o.shape or d.dtype != o.dtype or d.device != o.device:
            raise ValueError(f"datadiet.{op}: {name}[{t}] is {tuple(o.shape)} {o.dtype} on {o.device} but dst[{t}] "
                             f"is {tuple(d.shape)} {d.dtype} on {d.device}")
        if d.dtype == torch.bool:
            raise TypeError(f"datadiet.{op}: dst[{t}] is a bool tensor, which cannot be averaged")


def _average_other(d: torch.Tensor, values: list[torch.Tensor], weights: list[float]) -> None:
    """float64 tensors: the weighted sum in float64; integer tensors: the weighted mean, rounded."""
    # values is never empty (every caller passes one tensor per model), so the sum is a tensor.
    acc = cast(torch.Tensor, sum(w * v.double() for w, v in zip(weights, values)))
    if d.dtype.is_floating_point:
        d.copy_(acc)
    else:
        d.copy_(torch.round(acc / sum(weights)))


_REFERENCES: dict[str, Callable[..., None]] = {"average_": average_reference, "lerp_": lerp_reference,
                                               "magnitude_prune_": magnitude_prune_reference}


def _op(op: str, chosen: str) -> Callable[..., None]:
    """The implementation of ``op`` for a resolved backend."""
    if chosen == "torch":
        return _REFERENCES[op]
    return cast("Callable[..., None]",
                getattr(torch.ops.datadiet, op.rstrip("_") + "_triton" if chosen == "triton" else op))


def _backend(op: str, tensors: list[torch.Tensor], backend: str) -> str:
    device = tensors[0].device if tensors else torch.device("cpu")
    for i, t in enumerate(tensors):
        if t.device != device:
            raise ValueError(f"datadiet.{op}: tensors[{i}] is on {t.device} but tensors[0] is on {device}")
    return resolve(backend, device, op)


class _contiguous:
    """Contiguous stand-ins for the given tensors, written back on exit where they are copies."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = tensors
        self.views = [t if t.is_contiguous() else t.contiguous() for t in tensors]

    def __enter__(self) -> list[torch.Tensor]:
        return self.views

    def __exit__(self, *exc: object) -> None:
        for t, v in zip(self.tensors, self.views):
            if v is not t:
                t.copy_(v)


@torch.library.custom_op("datadiet::average_triton", mutates_args=("dst",))
def _average_triton(dst: list[torch.Tensor], sources: list[torch.Tensor], weights: list[float]) -> None:
    from datadiet.kernels import merge as kernel

    _check_layout("average_", dst, sources, "sources")
    models = len(sources) // len(dst) if dst else len(weights)
    if len(weights) != models:
        raise ValueError(f"datadiet.average_: got {len(weights)} weights for {models} models")
    if dst and models == 0:
        raise ValueError(f"datadiet.average_: needs at least one source model for {len(dst)} destination tensors, "
                         "got none")
    kernel.average_(dst, sources, weights)


@torch.library.custom_op("datadiet::lerp_triton", mutates_args=("dst",))
def _lerp_triton(dst: list[torch.Tensor], other: list[torch.Tensor], alpha: float) -> None:
    from datadiet.kernels import merge as kernel

    _check_layout("lerp_", dst, other, "other")
    if len(other) != len(dst):
        raise ValueError(f"datadiet.lerp_: other must hold one model of {len(dst)} tensors, got {len(other)}")
    kernel.lerp_(dst, other, alpha)


def _check_layout(op: str, dst: list[torch.Tensor], other: list[torch.Tensor], name: str) -> None:
    """The compiled ops' layout rules (``check_same_layout`` in ``csrc/ops/merge/merge.h``): the
    Triton kernels read raw pointers, so a mismatched tensor would be read out of bounds."""
    for label, ts in (("dst", dst), (name, other)):
        for i, t in enumerate(ts):
            if t.dtype not in _KERNEL_DTYPES or not t.is_contiguous():
                raise ValueError(f"datadiet.{op}: {label}[{i}] must be a contiguous float32, float16 or bfloat16 "
                                 f"tensor, got {t.dtype}{'' if t.is_contiguous() else ' (non-contiguous)'}")
    T = len(dst)
    if (len(other) % T if T else len(other)) != 0:
        raise ValueError(f"datadiet.{op}: {name} must hold whole models of {T} tensors, got {len(other)}")
    for i, o in enumerate(other):
        d = dst[i % T]
        if o.shape != d.shape or o.dtype != d.dtype or o.device != d.device:
            raise ValueError(f"datadiet.{op}: {name}[{i}] (model {i // T}, tensor {i % T}) is {tuple(o.shape)} "
                             f"{o.dtype} on {o.device} but dst[{i % T}] is {tuple(d.shape)} {d.dtype} on {d.device}")


@torch.library.custom_op("datadiet::magnitude_prune_triton", mutates_args=("tensors", "masks"))
def _magnitude_prune_triton(tensors: list[torch.Tensor], masks: list[torch.Tensor], keep: list[int]) -> None:
    from datadiet.kernels import merge as kernel

    kernel.magnitude_prune_(tensors, masks, keep)


if _extension.schemas_defined():
    torch.library.register_fake("datadiet::average_")(lambda dst, sources, weights: None)
    torch.library.register_fake("datadiet::lerp_")(lambda dst, other, alpha: None)
    torch.library.register_fake("datadiet::magnitude_prune_")(lambda tensors, masks, keep: None)
