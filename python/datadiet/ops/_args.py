"""Argument conversions shared by the op wrappers."""

from __future__ import annotations

from typing import Sequence, Union

import torch

IntSeqLike = Union[Sequence[int], torch.Tensor]  # offsets, budgets: a sequence or 1-D integer tensor


def int_list(x: IntSeqLike, name: str, op: str) -> list[int]:
    """A sequence or 1-D integer tensor as a list of Python ints; errors name the argument."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 1 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"datadiet.{op}: {name} must be a 1-D integer tensor or a sequence of ints, "
                             f"got {x.dtype} of shape {tuple(x.shape)}")
        return [int(v) for v in x.tolist()]
    try:
        out = [int(v) for v in x]
    except TypeError:
        raise TypeError(f"datadiet.{op}: {name} must be a sequence of ints, got {type(x).__name__}") from None
    if any(o != v for o, v in zip(out, x)):
        raise TypeError(f"datadiet.{op}: {name} must hold integers, got {list(x)[:8]}")
    return out


def as_int64(x: int) -> int:
    """An integer taken modulo 2^64, as the signed int64 with the same bits (the ops' seed type)."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x
