"""``selective_backprop_keep_``: the Selective-Backprop coin flips of Jiang et al. (2019) with
the loss history held on the device — no host synchronisation per batch.

Each call appends the batch's losses to a ring buffer of the last R losses, then keeps loss
``L`` with probability ``percentile(L)^beta``, ``percentile(L)`` = (history entries strictly
below ``L``) / (entries filled). Coins come from counter-based Philox (seed, step, position),
identical on every backend (``csrc/ops/select/select_math.h``).
"""

from __future__ import annotations

from typing import NoReturn, cast

import torch

from datadiet import _extension
from datadiet.backends import resolve
from datadiet.ops._args import as_int64
from datadiet.reference.select import selective_backprop_keep_reference

_Outputs = tuple[torch.Tensor, torch.Tensor]  # (keep, percentile)


def selective_backprop_keep_(
    losses: torch.Tensor,
    history: torch.Tensor,
    state: torch.Tensor,
    *,
    beta: float,
    seed: int,
    step: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Updates ``history`` / ``state`` in place; returns ``(keep [n] bool, percentile [n] float32)``.

    Args:
        losses: ``[n]`` float32 per-sample losses of the current batch (NaN is never kept
            and never counts as below another loss).
        history: ``[R]`` float32 ring buffer; ``state``: int64 ``[2]`` = (next write position,
            filled count), ``[0, 0]`` at the start. Both on ``losses``' device. An invalid state
            (a corrupt checkpoint: position outside ``[0, R)``, filled outside ``[0, R]``, or the
            two unequal before the ring is full) raises on CPU; on CUDA and Triton, where raising
            would cost a host synchronisation, it is detected on the device: history and state
            are left as they are and every loss comes back not kept with a NaN percentile.
            ``SelectiveBackpropSelector.load_state_dict`` validates on the host.
        beta: selectivity β >= 0 (expected kept fraction 1/(β+1) once the history is full);
            β = 0 keeps everything.
        seed, step: the coins of batch ``step`` under ``seed``; pass a new step per batch.
    """
    _check(losses, history, state, beta, seed, step)
    chosen = resolve(backend, losses.device, "selective_backprop_keep_")
    args = (losses.float().contiguous(), history, state, float(beta), as_int64(seed), as_int64(step))
    if chosen in ("cpu", "cuda"):
        return cast("_Outputs", torch.ops.datadiet.selective_backprop_keep_(*args))
    if chosen == "triton":
        return cast("_Outputs", torch.ops.datadiet.selective_backprop_keep_triton_(*args))
    return selective_backprop_keep_reference(*args)


def _check(losses: torch.Tensor, history: torch.Tensor, state: torch.Tensor, beta: float, seed: int,
           step: int) -> None:
    def fail(msg: str, exc: type[Exception] = ValueError) -> NoReturn:
        raise exc(f"datadiet.selective_backprop_keep_: {msg}")

    for name, t in (("losses", losses), ("history", history), ("state", state)):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} must be a tensor, got {type(t).__name__}", TypeError)
    if losses.dim() != 1 or not losses.is_floating_point():
        fail(f"losses must be a 1-D float tensor, got {losses.dtype} of shape {tuple(losses.shape)}")
    if history.dim() != 1 or history.numel() == 0 or history.dtype != torch.float32 or not history.is_contiguous():
        fail(f"history must be a non-empty contiguous 1-D float32 tensor, got {history.dtype} of shape "
             f"{tuple(history.shape)}")
    if state.shape != (2,) or state.dtype != torch.int64:
        fail(f"state must be int64 [2] (next write position, filled count), got {state.dtype} of shape "
             f"{tuple(state.shape)}")
    if history.device != losses.device or state.device != losses.device:
        fail(f"losses ({losses.device}), history ({history.device}) and state ({state.device}) must share a device")
    if not float(beta) >= 0.0:
        fail(f"beta must be >= 0, got {beta}")
    for name, v in (("seed", seed), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int):
            fail(f"{name} must be an int, got {v!r}", TypeError)


def _fake(losses: torch.Tensor, history: torch.Tensor, state: torch.Tensor, beta: float, seed: int,
          step: int) -> _Outputs:
    return losses.new_empty(losses.shape, dtype=torch.bool), losses.new_empty(losses.shape, dtype=torch.float32)


@torch.library.custom_op("datadiet::selective_backprop_keep_triton_", mutates_args=("history", "state"))
def _selective_backprop_keep_triton(losses: torch.Tensor, history: torch.Tensor, state: torch.Tensor, beta: float,
                                    seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    from datadiet.kernels import selective_backprop as kernel

    return cast("_Outputs", kernel.selective_backprop_keep_(losses, history, state, beta, seed, step))


_selective_backprop_keep_triton.register_fake(_fake)
if _extension.schemas_defined():
    torch.library.register_fake("datadiet::selective_backprop_keep_")(_fake)
