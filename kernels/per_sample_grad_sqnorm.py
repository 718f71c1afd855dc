"""Triton kernels of ``datadiet::per_sample_grad_sqnorm`` (and ``per_sample_conv_grad_sqnorm``, which
gathers A from the convolution input instead of reading a materialised unfold): one program per
tile of one sample's
per-group gradient ``M = Gᵀ A`` (the work items of ``csrc/ops/grad_norm/grad_norm_math.h``), built
over T in ``BLOCK_T`` steps with ``tl.dot`` (IEEE float32, no TF32) for float32 / float16 /
bfloat16 inputs, or a float64 broadcast-multiply-sum for float64 ones. Each program stores only
its tile's squared sum; the wrapper sums each sample's tiles in item order."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from datadiet.kernels._launch import POINTER, launch, variant

_NARROW = dict(BLOCK_P=32, BLOCK_D=32, BLOCK_T=16, WIDE=False)
_WIDE = dict(BLOCK_P=16, BLOCK_D=16, BLOCK_T=8, WIDE=True)


@triton.jit
def _decode(item, tiles_p, tiles_d, groups):
    """Work item -> (sample, group, row tile, column tile), the order of grad_norm_math.h."""
    tile_d = item % tiles_d
    rest = item // tiles_d
    tile_p = rest % tiles_p
    rest = rest // tiles_p
    return (rest // groups).to(tl.int64), rest % groups, tile_p, tile_d


@triton.jit
def _accumulate(acc, gt, at, WIDE: tl.constexpr):
    """acc + gtᵀ at: float64 broadcast-multiply-sum, or an IEEE float32 dot (no TF32)."""
    if WIDE:
        acc = acc + tl.sum(gt.to(tl.float64)[:, :, None] * at.to(tl.float64)[:, None, :], axis=0)
    else:
        acc = acc + tl.dot(tl.trans(gt.to(tl.float32)), at.to(tl.float32), input_precision="ieee")
    return acc


@triton.jit
def _tile_kernel(a_ptr, g_ptr, partial_ptr, T, dg, pg, sa0, sa1, sa2, sg0, sg1, sg2, tiles_p, tiles_d, groups,
                 BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, WIDE: tl.constexpr):
    item = tl.program_id(0)
    i, k, tile_p, tile_d = _decode(item, tiles_p, tiles_d, groups)
    rows = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    g_cols = (k * pg + rows).to(tl.int64) * sg2
    a_cols = (k * dg + cols).to(tl.int64) * sa2
    acc = tl.zeros((BLOCK_P, BLOCK_D), tl.float64 if WIDE else tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        live = ts < T
        tsl = ts.to(tl.int64)
        gt = tl.load(g_ptr + i * sg0 + tsl[:, None] * sg1 + g_cols[None, :], mask=live[:, None] & (rows < pg)[None, :],
                     other=0.0)
        at = tl.load(a_ptr + i * sa0 + tsl[:, None] * sa1 + a_cols[None, :], mask=live[:, None] & (cols < dg)[None, :],
                     other=0.0)
        acc = _accumulate(acc, gt, at, WIDE)
    tl.store(partial_ptr + item, tl.sum(tl.sum(acc * acc, axis=1), axis=0))


@triton.jit
def _conv_tile_kernel(x_ptr, g_ptr, partial_ptr, T, dg, pg, sx0, sxc, sxy, sxx, sg0, sgt, sgc, H, W, kh, kw, sh, sw,
                      ph, pw, dh, dw, Wo, tiles_p, tiles_d, groups,
                      BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, WIDE: tl.constexpr):
    item = tl.program_id(0)
    i, k, tile_p, tile_d = _decode(item, tiles_p, tiles_d, groups)
    rows = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    g_cols = (k * pg + rows).to(tl.int64) * sgc
    # column c of group k -> input channel and kernel tap (F.unfold's order)
    c = k * dg + cols
    kk = kh * kw
    channel = (c // kk).to(tl.int64) * sxc
    tap = c % kk
    dy = (tap // kw) * dh - ph
    dx = (tap % kw) * dw - pw
    acc = tl.zeros((BLOCK_P, BLOCK_D), tl.float64 if WIDE else tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        live = ts < T
        gt = tl.load(g_ptr + i * sg0 + ts.to(tl.int64)[:, None] * sgt + g_cols[None, :],
                     mask=live[:, None] & (rows < pg)[None, :], other=0.0)
        y = (ts // Wo * sh)[:, None] + dy[None, :]
        xx = (ts % Wo * sw)[:, None] + dx[None, :]
        inside = live[:, None] & (cols < dg)[None, :] & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
        at = tl.load(x_ptr + i * sx0 + channel[None, :] + y.to(tl.int64) * sxy + xx.to(tl.int64) * sxx, mask=inside,
                     other=0.0)
        acc = _accumulate(acc, gt, at, WIDE)
    tl.store(partial_ptr + item, tl.sum(tl.sum(acc * acc, axis=1), axis=0))


def per_sample_conv_grad_sqnorm(x: torch.Tensor, g: torch.Tensor, kernel_size, stride, padding, dilation,
                                groups: int) -> torch.Tensor:
    B, C, H, W = x.shape
    O, Ho, Wo = g.shape[1:]
    t_stride = g.stride(2) if Wo == 1 else g.stride(3)  # g read as [B, T = Ho·Wo, O]
    geometry = (*x.stride(), g.stride(0), t_stride, g.stride(1), H, W, *kernel_size, *stride, *padding, *dilation, Wo)
    return _tiles(_conv_tile_kernel, x, g, B, Ho * Wo, C * kernel_size[0] * kernel_size[1], O, groups, geometry)


def per_sample_grad_sqnorm(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    B, T, d = a.shape
    return _tiles(_tile_kernel, a, g, B, T, d, g.shape[2], groups, (*a.stride(), *g.stride()))


def _tiles(kernel, a: torch.Tensor, g: torch.Tensor, B: int, T: int, d: int, p: int, groups: int,
           layout: tuple) -> torch.Tensor:
    """Launches ``kernel(a, g, partial, T, dg, pg, *layout, tiles_p, tiles_d, groups)`` over every
    work item and sums each sample's tiles in item order."""
    wide = a.dtype == torch.float64
    acc = torch.float64 if wide else torch.float32
    dg, pg = d // groups, p // groups
    blocks = _WIDE if wide else _NARROW
    tiles_p, tiles_d = triton.cdiv(pg, blocks["BLOCK_P"]), triton.cdiv(dg, blocks["BLOCK_D"])
    per = groups * tiles_p * tiles_d
    if B == 0 or T == 0 or per == 0:
        return torch.zeros(B, dtype=acc, device=a.device)
    partial = torch.empty(B * per, dtype=acc, device=a.device)
    launch(kernel, (B * per,), a, g, partial, T, dg, pg, *layout, tiles_p, tiles_d, groups, **blocks)
    return partial.view(B, per).sum(1)


def variants():
    for kernel, count in ((_tile_kernel, 12), (_conv_tile_kernel, 24)):
        ints = " ".join(["i32"] * count)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            yield variant(kernel, f"{POINTER[dtype]} {POINTER[dtype]} *fp32 {ints}", **_NARROW)
        yield variant(kernel, f"*fp64 *fp64 *fp64 {ints}", **_WIDE)
