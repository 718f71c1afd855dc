"""Triton launcher of ``datadiet::topk_select``: ordered keys of the scores, then the shared
per-segment select (``radix_select.py``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import POINTER, launch, variant
from datadiet.kernels.radix_select import select_smallest
from datadiet.kernels.select_common import ordered_key

_BLOCK = 1024
SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _keys_kernel(scores_ptr, keys_ptr, n, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = idx < n
    x = tl.load(scores_ptr + idx, mask=live, other=0.0).to(tl.float32)
    tl.store(keys_ptr + idx, ordered_key(x, LARGEST), mask=live)


def topk_select(scores: torch.Tensor, offsets: list[int], ks: list[int], largest: bool) -> torch.Tensor:
    n = scores.numel()
    keys = torch.empty(n, dtype=torch.int64, device=scores.device)
    if n:
        launch(_keys_kernel, (triton.cdiv(n, _BLOCK),), scores, keys, n, LARGEST=bool(largest), BLOCK=_BLOCK)
    return select_smallest(keys, offsets, ks)


def variants():
    for dtype in SCORE_DTYPES:
        for largest in (False, True):
            yield variant(_keys_kernel, f"{POINTER[dtype]} *i64 i32", LARGEST=largest, BLOCK=_BLOCK)
