"""Triton launcher of ``datadiet::weighted_sample``: exponential keys (``select_common.py``,
no fused multiply-add) then the shared per-segment select (``radix_select.py``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import POINTER, launch, variant
from datadiet.kernels.radix_select import select_smallest
from datadiet.kernels.select_common import exponential_key, random_word

_BLOCK = 1024
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _keys_kernel(weights_ptr, keys_ptr, n, seed, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = idx < n
    w = tl.load(weights_ptr + idx, mask=live, other=0.0).to(tl.float32)
    tl.store(keys_ptr + idx, exponential_key(w, random_word(idx, 0, seed)), mask=live)


def weighted_sample(weights: torch.Tensor, offsets: list[int], ks: list[int], seed: int) -> torch.Tensor:
    n = weights.numel()
    keys = torch.empty(n, dtype=torch.int64, device=weights.device)
    if n:
        launch(_keys_kernel, (triton.cdiv(n, _BLOCK),), weights, keys, n, seed, BLOCK=_BLOCK, enable_fp_fusion=False)
    return select_smallest(keys, offsets, ks)


def variants():
    for dtype in WEIGHT_DTYPES:
        for seed in ("i32", "i64"):  # Triton types the seed by its value
            yield variant(_keys_kernel, f"{POINTER[dtype]} *i64 i32 {seed}", BLOCK=_BLOCK, enable_fp_fusion=False)
