"""Triton engine behind ``topk_select`` and ``weighted_sample``: one program per segment finds
the k-th smallest key bit by bit (32 counting passes over the segment: the largest T with
count(key < T) < k), then one pass writes, in index order, every element with key < T and
the first k - count(key < T) elements with key == T. The caller orders the picks by
(segment, key) with a stable sort, which yields the (key, index) order of the other backends.

Simple rather than fast (32 + 2 passes per segment); the CUDA backend is the fast GPU path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import launch, upload, variant

_BLOCK = 1024


@triton.jit
def _count_below(keys_ptr, start, n, bound, BLOCK: tl.constexpr):
    total = start * 0
    for off in range(0, n, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        live = idx < n
        key = tl.load(keys_ptr + start + idx, mask=live, other=0)
        total += tl.sum(((key < bound) & live).to(tl.int64), axis=0)
    return total


@triton.jit
def _select_kernel(keys_ptr, table_ptr, out_ptr, BLOCK: tl.constexpr):
    row = table_ptr + 4 * tl.program_id(0).to(tl.int64)  # start, length, k, first output slot
    start = tl.load(row)
    n = tl.load(row + 1)
    k = tl.load(row + 2)
    out_at = tl.load(row + 3)
    threshold = start * 0
    half = start * 0 + 2147483648
    for _ in range(32):
        candidate = threshold + half
        if _count_below(keys_ptr, start, n, candidate, BLOCK) < k:
            threshold = candidate
        half = half >> 1
    need = k - _count_below(keys_ptr, start, n, threshold, BLOCK)
    equal_seen = start * 0
    written = start * 0
    for off in range(0, n, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        live = idx < n
        key = tl.load(keys_ptr + start + idx, mask=live, other=0)
        below = ((key < threshold) & live).to(tl.int64)
        equal = ((key == threshold) & live).to(tl.int64)
        equal_rank = equal_seen + tl.cumsum(equal, axis=0) - equal
        take = below | (equal & (equal_rank < need).to(tl.int64))
        dst = written + tl.cumsum(take, axis=0) - take
        tl.store(out_ptr + out_at + dst, start + idx, mask=take != 0)
        written += tl.sum(take, axis=0)
        equal_seen += tl.sum(equal, axis=0)


def select_smallest(keys: torch.Tensor, offsets: list[int], ks: list[int]) -> torch.Tensor:
    """keys: int64 [n] in [0, 2^32). Per segment, global indices of the k smallest (key, index)."""
    device = keys.device
    total = sum(ks)
    out = torch.empty(total, dtype=torch.int64, device=device)
    live = [g for g, k in enumerate(ks) if k > 0]
    if not live:
        return out
    out_starts = [0]
    for k in ks[:-1]:
        out_starts.append(out_starts[-1] + k)
    table = upload([[offsets[g], offsets[g + 1] - offsets[g], ks[g], out_starts[g]] for g in live], device)
    launch(_select_kernel, (len(live),), keys, table, out, BLOCK=_BLOCK)
    segment = torch.repeat_interleave(torch.arange(len(ks), device=device), upload(ks, device), output_size=total)
    order = torch.sort(segment * (1 << 32) + keys[out], stable=True).indices
    return out[order]


def variants():
    yield variant(_select_kernel, "*i64 *i64 *i64", BLOCK=_BLOCK)
