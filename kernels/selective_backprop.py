"""Triton kernel of ``datadiet::selective_backprop_keep_``: one program appends the batch to the
ring buffer, then counts, for each loss, the history entries strictly below it (a
[BLOCK, HBLOCK] comparison tile per step) and flips the coin of ``select_common.py``.

The state is checked on the device, with the CPU kernel's rule (0 <= position < R, 0 <= filled
<= R, position == filled until the ring is full): an invalid one (a corrupt checkpoint) leaves
history and state untouched and marks every loss not kept with a NaN percentile, without the
host synchronisation that raising would need."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import launch, variant
from datadiet.kernels.select_common import div_rn, percentile_coin

_BLOCK = 64
_HBLOCK = 256


@triton.jit
def _keep_kernel(losses_ptr, history_ptr, state_ptr, keep_ptr, percentile_ptr, n, size, beta, seed, step,
                 BLOCK: tl.constexpr, HBLOCK: tl.constexpr):
    position = tl.load(state_ptr)
    filled = tl.load(state_ptr + 1)
    valid = (position >= 0) & (position < size) & (filled >= 0) & (filled <= size)
    valid = valid & ((filled == size) | (position == filled))
    if valid:
        _append_and_flip(losses_ptr, history_ptr, state_ptr, keep_ptr, percentile_ptr, n, size, beta, seed, step,
                         position, filled, BLOCK, HBLOCK)
    else:
        for off in range(0, n, BLOCK):
            i = off + tl.arange(0, BLOCK)
            tl.store(percentile_ptr + i, tl.full((BLOCK,), float("nan"), tl.float32), mask=i < n)
            tl.store(keep_ptr + i, tl.zeros((BLOCK,), tl.uint8), mask=i < n)


@triton.jit
def _append_and_flip(losses_ptr, history_ptr, state_ptr, keep_ptr, percentile_ptr, n, size, beta, seed, step,
                     position, filled, BLOCK: tl.constexpr, HBLOCK: tl.constexpr):
    first = tl.maximum(n - size, 0)
    for off in range(first, n, BLOCK):
        i = off + tl.arange(0, BLOCK)
        live = i < n
        tl.store(history_ptr + (position + i) % size, tl.load(losses_ptr + i, mask=live), mask=live)
    tl.debug_barrier()
    filled = tl.minimum(filled + n, size)
    for off in range(0, n, BLOCK):
        i = off + tl.arange(0, BLOCK)
        live = i < n
        loss = tl.load(losses_ptr + i, mask=live, other=0.0)
        below = tl.zeros((BLOCK,), tl.int64)
        for h in range(0, filled, HBLOCK):
            j = h + tl.arange(0, HBLOCK)
            past = tl.load(history_ptr + j, mask=j < filled, other=float("nan"))
            below += tl.sum((past[None, :] < loss[:, None]).to(tl.int64), axis=1)
        tl.store(percentile_ptr + i, div_rn(below.to(tl.float32), filled.to(tl.float32)), mask=live)
        keep = percentile_coin(below, filled, beta, i.to(tl.int64), step, seed)
        tl.store(keep_ptr + i, keep.to(tl.uint8), mask=live)
    tl.debug_barrier()
    tl.store(state_ptr, (position + n) % size)
    tl.store(state_ptr + 1, filled)


def selective_backprop_keep_(losses: torch.Tensor, history: torch.Tensor, state: torch.Tensor, beta: float,
                             seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = losses.numel()
    keep = torch.empty(n, dtype=torch.bool, device=losses.device)
    percentile = torch.empty(n, dtype=torch.float32, device=losses.device)
    launch(_keep_kernel, (1,), losses, history, state, keep.view(torch.uint8), percentile, n, history.numel(),
           float(beta), seed, step, BLOCK=_BLOCK, HBLOCK=_HBLOCK, enable_fp_fusion=False)
    return keep, percentile


def variants():
    for seed in ("i32", "i64"):  # Triton types seed and step by their values
        for step in ("i32", "i64"):
            yield variant(_keep_kernel, f"*fp32 *fp32 *i64 *u8 *fp32 i32 i32 fp32 {seed} {step}", BLOCK=_BLOCK,
                          HBLOCK=_HBLOCK, enable_fp_fusion=False)
