"""Triton kernel for ``datadiet::ce_scores``: one program per row, online softmax over
column blocks.

The formulas are those of ``csrc/ops/ce_scores/ce_scores_math.h`` (read its header
comment for the derivations): per row keep the running max ``m`` and off-label sums
``s1 = Σ_{j≠y} e^{z_j-m}``, ``s2 = Σ_{j≠y} e^{2(z_j-m)}``, ``t = Σ_{j≠y} e^{z_j-m}(z_j-m)``,
rescaled by ``e^{m_old-m_new}`` whenever a block raises the max; ``sum_z = Σ(z_j - pivot)``
is NaN or +inf exactly when the row holds a NaN or +inf logit.

Accuracy where a row is confident (p_y near 1, loss below 1e-4) rests on ``log1p`` and
``expm1`` accurate to a few ulp and on correctly rounded division, as in the CPU kernel.
Compiled, ``tl.log`` / ``tl.exp`` lower to approximate instructions and ``/`` to an
approximate division, so the kernel takes ``log1p`` / ``expm1`` from libdevice and divides
with ``div_rn``. The interpreter has no libdevice: under ``TRITON_INTERPRET=1`` (read at
import, ``LIBDEVICE``) Goldberg's log1p and Kahan's expm1, exact-rounding tricks over NumPy's
correctly rounded log / exp, stand in.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from datadiet.kernels._launch import POINTER, launch, variant

_MAX_BLOCK_C = 2048
# Compiled kernels call libdevice; the interpreter cannot (module docstring).
LIBDEVICE = not triton.knobs.runtime.interpret
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


if LIBDEVICE:
    @triton.jit
    def _log1p(x):
        return libdevice.log1p(x)

    @triton.jit
    def _expm1(x):
        return libdevice.expm1(x)
else:
    @triton.jit
    def _log1p(x):
        # Goldberg's log1p from a correctly rounded log (the interpreter's NumPy).
        u = 1.0 + x
        return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))

    @triton.jit
    def _expm1(x):
        # Kahan's expm1 from a correctly rounded exp and log; -inf -> -1.
        u = tl.exp(x)
        return tl.where(u == 1.0, x, tl.where(u - 1.0 == -1.0, -1.0, (u - 1.0) * (x / tl.log(u))))


@triton.jit(do_not_specialize=["C"])  # C = 1 would become a constexpr, and C.to(...) below a compile error
def _ce_scores_kernel(
    logits_ptr, stride_row, stride_col,
    targets_ptr, stride_t,
    hsq_ptr, stride_h,
    loss_ptr, el2n_ptr, grad_ptr, conf_ptr, margin_ptr, entropy_ptr, correct_ptr,
    emb_ptr,
    C, ignore_index, eps,
    HAS_HSQ: tl.constexpr, WRITE_EMB: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    y = tl.load(targets_ptr + row * stride_t)
    labelled = y != ignore_index
    invalid = labelled & ((y < 0) | (y >= C))
    has_label = labelled & (y >= 0) & (y < C)
    y_excl = tl.where(has_label, y, -1)
    first = tl.load(base).to(tl.float32)
    pivot = tl.where((first > float("-inf")) & (first < float("inf")), first, 0.0)

    m = tl.full((), float("-inf"), tl.float32)
    second = tl.full((), float("-inf"), tl.float32)
    argmax = tl.full((), -1, tl.int64)
    s1 = tl.zeros((), tl.float32)
    s2 = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    sum_z = tl.zeros((), tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = cols < C
        z = tl.load(base + cols.to(tl.int64) * stride_col, mask=mask, other=float("-inf")).to(tl.float32)
        sum_z += tl.sum(tl.where(mask, z - pivot, 0.0), axis=0)
        # Block top-2; earlier blocks hold lower indices, so they win ties.
        bm = tl.max(z, axis=0)
        bidx = tl.min(tl.where(z == bm, cols, 2147483647), axis=0)
        bsec = tl.max(tl.where(cols == bidx, float("-inf"), z), axis=0)
        block_wins = bm > m
        second = tl.where(block_wins, tl.maximum(bsec, m), tl.maximum(second, bm))
        argmax = tl.where(block_wins, bidx.to(tl.int64), argmax)
        new_m = tl.where(block_wins, bm, m)
        # Rescale the sums to the new max (an empty state has nothing to rescale).
        safe_m = tl.where(new_m > float("-inf"), new_m, 0.0)
        had = m > float("-inf")
        d_old = tl.where(had, m - safe_m, 0.0)
        r = tl.where(had, tl.exp(d_old), 0.0)
        t = r * (t + d_old * s1)
        s1 = s1 * r
        s2 = s2 * r * r
        d = z - safe_m
        # (The interpreter cannot AND a scalar predicate into a vector one; where() can.)
        e = tl.where(new_m > float("-inf"), tl.where(mask & (cols != y_excl), tl.exp(d), 0.0), 0.0)
        s1 += tl.sum(e, axis=0)
        s2 += tl.sum(e * e, axis=0)
        t += tl.sum(tl.where(e > 0.0, e * d, 0.0), axis=0)
        m = new_m

    bad = ~(sum_z < float("inf")) | ~(m > float("-inf"))
    z_y = tl.load(base + tl.where(has_label, y, 0) * stride_col).to(tl.float32)
    # log S = log1p(s1 + expm1(z_y - m)): keeps the loss when p_y is within 1e-7 of 1.
    ey_m1 = tl.where(has_label, _expm1(z_y - m), -1.0)
    ey = ey_m1 + 1.0
    S = s1 + ey
    inv_s = tl.math.div_rn(1.0, S)
    log_s = tl.where(has_label, _log1p(s1 + ey_m1), tl.log(s1))
    Cf = C.to(tl.float32)
    a = tl.math.div_rn(eps, Cf)
    off = s1 * inv_s  # 1 - p_y without cancellation
    confidence = inv_s
    margin = (1.0 - tl.exp(second - m)) * inv_s
    t_all = t + tl.where(ey > 0.0, ey * (z_y - m), 0.0)
    entropy = log_s - t_all * inv_s
    # log S + (1-ε)(m - z_y) + ε(m - mean z): terms >= 0 or +inf (never inf - inf), small log S last.
    to_target = tl.where(eps < 1.0, (1.0 - eps) * (m - z_y), 0.0)
    to_mean = tl.where(eps > 0.0, eps * (m - (pivot + tl.math.div_rn(sum_z, Cf))), 0.0)
    loss = log_s + (to_target + to_mean)
    ey_err = tl.math.div_rn(eps * (Cf - 1.0), Cf) - off
    sq = s2 * inv_s * inv_s - 2.0 * a * off + (C - 1) * a * a + ey_err * ey_err
    el2n = tl.sqrt(tl.maximum(sq, 0.0))
    if HAS_HSQ:
        grad = el2n * tl.sqrt(tl.load(hsq_ptr + row * stride_h) + 1.0)
    else:
        grad = el2n
    correct = has_label & (argmax == y) & ~bad

    nan = float("nan")
    label_bad = bad | invalid
    tl.store(loss_ptr + row, tl.where(labelled, tl.where(label_bad, nan, loss), 0.0))
    tl.store(el2n_ptr + row, tl.where(labelled, tl.where(label_bad, nan, el2n), 0.0))
    tl.store(grad_ptr + row, tl.where(labelled, tl.where(label_bad, nan, grad), 0.0))
    tl.store(conf_ptr + row, tl.where(label_bad, nan, confidence))
    tl.store(margin_ptr + row, tl.where(label_bad, nan, margin))
    tl.store(entropy_ptr + row, tl.where(label_bad, nan, entropy))
    tl.store(correct_ptr + row, correct.to(tl.uint8))

    if WRITE_EMB:
        out = emb_ptr + row * C
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = cols < C
            z = tl.load(base + cols.to(tl.int64) * stride_col, mask=mask, other=0.0).to(tl.float32)
            v = tl.exp(z - m) * inv_s - a
            v = tl.where(cols == y, ey_err, v)
            v = tl.where(labelled, tl.where(label_bad, nan, v), 0.0)
            tl.store(out + cols, v.to(emb_ptr.dtype.element_ty), mask=mask)


def ce_scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    feature_sqnorm: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    embedding_dtype: Optional[torch.dtype],
    block_c: Optional[int] = None,
) -> tuple[torch.Tensor, ...]:
    """Launch the kernel; arguments as in ``torch.ops.datadiet.ce_scores`` (already validated).

    ``block_c`` overrides the column block (a power of two); tests use small ones to
    exercise the cross-block rescaling on tiny rows under the interpreter.
    """
    from datadiet.ops.ce_scores import empty_outputs

    n, c = logits.shape
    *scores, correct, embedding = empty_outputs(logits, embedding_dtype)
    if n > 0:
        block = block_c or min(triton.next_power_of_2(c), _MAX_BLOCK_C)
        hsq = feature_sqnorm if feature_sqnorm is not None else scores[0]
        launch(
            _ce_scores_kernel, (n,),
            logits, logits.stride(0), logits.stride(1),
            targets, targets.stride(0),
            hsq, hsq.stride(0),
            *scores, correct.view(torch.uint8),
            embedding,
            c, ignore_index, float(label_smoothing),
            HAS_HSQ=feature_sqnorm is not None,
            WRITE_EMB=embedding_dtype is not None,
            BLOCK_C=block,
            num_warps=_warps(block),
        )  # fmt: skip
    return (*scores, correct, embedding)


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def variants():
    """Column blocks 1 … 2048 (``block_c`` and the rows' next power of two), every logits and
    embedding dtype (none: an empty float32 placeholder), with and without feature norms."""
    for logits in FLOAT_DTYPES:
        for embedding in (None,) + FLOAT_DTYPES:
            for has_hsq in (False, True):
                for log_block in range(_MAX_BLOCK_C.bit_length()):
                    block = 1 << log_block
                    types = (f"{POINTER[logits]} i32 i32 *i64 i32 *fp32 i32 " + "*fp32 " * 6 + "*u8 "
                             + f"{POINTER[embedding or torch.float32]} i32 i32 fp32")
                    yield variant(_ce_scores_kernel, types, HAS_HSQ=has_hsq, WRITE_EMB=embedding is not None,
                                  BLOCK_C=block, num_warps=_warps(block))
