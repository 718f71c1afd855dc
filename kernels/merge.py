"""Triton launchers of ``datadiet::average_``, ``lerp_`` and ``magnitude_prune_``: the CUDA kernels'
multi-tensor design (``csrc/ops/merge/*_cuda.cu``). Tensors of one dtype are described in an
int64 table (pointers, sizes) and cut into chunks; one program per chunk, one launch per dtype
(average/lerp) or per pass (pruning, every dtype and group in the same launch pass by pass).

Pruning per group: four 8-bit histogram passes find the keep-th largest magnitude key (the
float32 bit pattern of |x|), a pass counts each chunk's ties when some are dropped, and the apply
pass zeroes the rest, ranking ties in index order with a running ``cumsum``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import launch, upload, variant

CHUNK = 65536
BLOCK = 1024
BINS = 256
_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@triton.jit
def _average_kernel(table, chunks, weights, inputs, alpha, LERP: tl.constexpr, DTYPE: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(chunks + 3 * c)
    begin = tl.load(chunks + 3 * c + 1)
    row = table + t * (2 + inputs)
    numel = tl.load(row)
    dst = tl.load(row + 1).to(tl.pointer_type(DTYPE))
    end = tl.minimum(numel, begin + CHUNK)
    for off in range(begin, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        live = idx < end
        if LERP:
            x = tl.load(dst + idx, mask=live, other=0.0).to(tl.float32)
            y = tl.load(tl.load(row + 2).to(tl.pointer_type(DTYPE)) + idx, mask=live, other=0.0).to(tl.float32)
            acc = x + alpha * (y - x)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for m in range(inputs):
                src = tl.load(row + 2 + m).to(tl.pointer_type(DTYPE))
                acc += tl.load(weights + m) * tl.load(src + idx, mask=live, other=0.0).to(tl.float32)
        tl.store(dst + idx, acc.to(DTYPE), mask=live)


def _chunks(sizes: list[int], groups: list[int], device) -> torch.Tensor:
    rows = [(t, b, groups[t]) for t, n in enumerate(sizes) for b in range(0, n, CHUNK)]
    return upload(rows, device).reshape(-1, 3)


def _average(dst: list[torch.Tensor], inputs: list[list[torch.Tensor]], weights: list[float], alpha: float,
             lerp: bool) -> None:
    for dtype in {d.dtype for d in dst}:
        pick = [t for t, d in enumerate(dst) if d.dtype == dtype]
        sizes = [dst[t].numel() for t in pick]
        if not any(sizes):
            continue
        device = dst[0].device
        table = upload([[dst[t].numel(), dst[t].data_ptr()] + [x[t].data_ptr() for x in inputs] for t in pick], device)
        chunks = _chunks(sizes, [0] * len(pick), device)
        w = upload(weights or [0.0], device, torch.float32)
        launch(_average_kernel, (chunks.shape[0],), table, chunks, w, len(inputs), float(alpha), LERP=lerp,
               DTYPE=_TL[dtype], CHUNK=CHUNK, BLOCK=BLOCK)


def average_(dst: list[torch.Tensor], sources: list[torch.Tensor], weights: list[float]) -> None:
    T = len(dst)
    _average(dst, [sources[m * T:(m + 1) * T] for m in range(len(weights))], weights, 0.0, False)


def lerp_(dst: list[torch.Tensor], other: list[torch.Tensor], alpha: float) -> None:
    _average(dst, [other], [], alpha, True)


@triton.jit
def _keys(row, idx, live, dtype):
    """Magnitude keys of elements idx of the tensor in `row` (dtype code 0 f32, 1 f16, 2 bf16)."""
    if dtype == 0:
        x = tl.load(tl.load(row).to(tl.pointer_type(tl.float32)) + idx, mask=live, other=0.0)
    elif dtype == 1:
        x = tl.load(tl.load(row).to(tl.pointer_type(tl.float16)) + idx, mask=live, other=0.0).to(tl.float32)
    else:
        x = tl.load(tl.load(row).to(tl.pointer_type(tl.bfloat16)) + idx, mask=live, other=0.0).to(tl.float32)
    return x.to(tl.uint32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _this_chunk(table, chunks, state):
    """This program's chunk: its tensor's table row, first element, and its group's state."""
    c = tl.program_id(0)
    row = table + 4 * tl.load(chunks + 3 * c)
    return row, tl.load(chunks + 3 * c + 1), state + tl.load(chunks + 3 * c + 2) * (4 + 256)


@triton.jit
def _histogram_kernel(table, chunks, state, PASS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row, begin, st = _this_chunk(table, chunks, state)
    if tl.load(st + 3) > 0:
        numel = tl.load(row + 1)
        dtype = tl.load(row + 2)
        prefix = tl.load(st).to(tl.uint32)
        end = tl.minimum(numel, begin + CHUNK)
        counts = tl.zeros([256], dtype=tl.int32)
        for off in range(begin, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            live = idx < end
            key = _keys(row, idx, live, dtype)
            if PASS > 0:
                live = live & ((key >> (32 - 8 * PASS)) == prefix)
            counts += tl.histogram(((key >> (24 - 8 * PASS)) & 255).to(tl.int32), 256, mask=live)
        bins = tl.arange(0, 256)
        tl.atomic_add(st + 4 + bins, counts.to(tl.int64), mask=counts > 0)


@triton.jit
def _choose_kernel(state):
    """The digit holding the want-th largest key: the largest bin whose suffix count reaches want."""
    st = state + tl.program_id(0) * (4 + 256)
    if tl.load(st + 3) > 0:
        bins = tl.arange(0, 256)
        hist = tl.load(st + 4 + bins)
        want = tl.load(st + 1)
        total = tl.sum(hist, axis=0)
        suffix = total - tl.cumsum(hist, axis=0) + hist  # keys in bins >= b
        d = tl.max(tl.where(suffix >= want, bins, 0), axis=0)
        above = tl.sum(tl.where(bins > d, hist, 0), axis=0)
        tl.store(st + 1, want - above)
        tl.store(st + 2, tl.sum(tl.where(bins == d, hist, 0), axis=0))
        tl.store(st, (tl.load(st) << 8) | d)
        tl.store(st + 4 + bins, tl.zeros([256], dtype=tl.int64))


@triton.jit
def _count_ties_kernel(table, chunks, state, ties, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row, begin, st = _this_chunk(table, chunks, state)
    if (tl.load(st + 3) > 0) & (tl.load(st + 1) != tl.load(st + 2)):
        end = tl.minimum(tl.load(row + 1), begin + CHUNK)
        threshold = tl.load(st).to(tl.uint32)
        n = begin * 0
        for off in range(begin, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            live = idx < end
            n += tl.sum((live & (_keys(row, idx, live, tl.load(row + 2)) == threshold)).to(tl.int64), axis=0)
        tl.store(ties + tl.program_id(0), n)


@triton.jit
def _apply_kernel(table, chunks, state, offsets, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    row, begin, st = _this_chunk(table, chunks, state)
    keep = tl.load(st + 3)
    numel = tl.load(row + 1)
    dtype = tl.load(row + 2)
    mask_at = tl.load(row + 3)
    # keep == 0: a threshold above every key prunes everything.
    threshold = tl.where(keep > 0, tl.load(st), 0x7F800001).to(tl.uint32)
    need = tl.where(keep > 0, tl.load(st + 1), 0)
    rank_ties = (keep > 0) & (tl.load(st + 1) != tl.load(st + 2))
    seen = tl.where(rank_ties, tl.load(offsets + tl.program_id(0)), 0)
    end = tl.minimum(numel, begin + CHUNK)
    for off in range(begin, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        live = idx < end
        key = _keys(row, idx, live, dtype)
        tie = (live & (key == threshold)).to(tl.int64)
        rank = seen + tl.cumsum(tie, axis=0) - tie
        kept = (key > threshold) | ((tie != 0) & ((rank < need) | (rank_ties == 0)))
        pruned = live & (kept == 0)
        if dtype == 0:
            tl.store(tl.load(row).to(tl.pointer_type(tl.float32)) + idx, 0.0, mask=pruned)
        elif dtype == 1:
            tl.store(tl.load(row).to(tl.pointer_type(tl.float16)) + idx, 0.0, mask=pruned)
        else:
            tl.store(tl.load(row).to(tl.pointer_type(tl.bfloat16)) + idx, 0.0, mask=pruned)
        if mask_at != 0:
            tl.store(mask_at.to(tl.pointer_type(tl.int8)) + idx, kept.to(tl.int8), mask=live)
        seen += tl.sum(tie, axis=0)


def magnitude_prune_(tensors: list[torch.Tensor], masks: list[torch.Tensor], keep: list[int]) -> None:
    if not tensors:
        return
    device = tensors[0].device
    T = len(tensors)
    groups = [0] * T if len(keep) == 1 and T != 1 else list(range(T))
    if not any(t.numel() for t in tensors):
        return
    table = upload([[t.data_ptr(), t.numel(), _CODE[t.dtype], masks[i].data_ptr() if masks else 0]
                    for i, t in enumerate(tensors)], device)
    chunks = _chunks([t.numel() for t in tensors], groups, device)
    count = chunks.shape[0]
    state = upload([[0, k, 0, k] + [0] * BINS for k in keep], device)  # prefix, want, ties, keep, histogram
    for p in range(4):
        launch(_histogram_kernel, (count,), table, chunks, state, PASS=p, CHUNK=CHUNK, BLOCK=BLOCK)
        launch(_choose_kernel, (len(keep),), state)
    ties = torch.zeros(count, dtype=torch.int64, device=device)
    launch(_count_ties_kernel, (count,), table, chunks, state, ties, CHUNK=CHUNK, BLOCK=BLOCK)
    # Ties before each chunk within its group (groups' chunks are consecutive): torch ops, no sync.
    group = chunks[:, 2].contiguous()
    running = torch.cumsum(ties, 0) - ties
    first = torch.searchsorted(group, group)
    offsets = running - running[first]
    launch(_apply_kernel, (count,), table, chunks, state, offsets, CHUNK=CHUNK, BLOCK=BLOCK)


def variants():
    for dtype in _TL.values():
        for lerp in (False, True):
            yield variant(_average_kernel, "*i64 *i64 *fp32 i32 fp32", LERP=lerp, DTYPE=dtype, CHUNK=CHUNK,
                          BLOCK=BLOCK)
    for p in range(4):
        yield variant(_histogram_kernel, "*i64 *i64 *i64", PASS=p, CHUNK=CHUNK, BLOCK=BLOCK)
    yield variant(_choose_kernel, "*i64")
    yield variant(_count_ties_kernel, "*i64 *i64 *i64 *i64", CHUNK=CHUNK, BLOCK=BLOCK)
    yield variant(_apply_kernel, "*i64 *i64 *i64 *i64", CHUNK=CHUNK, BLOCK=BLOCK)
