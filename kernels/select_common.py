"""Triton versions of ``csrc/ops/select/select_math.h``: ordered keys, Philox words, the
exponential keys of weighted sampling and the Selective-Backprop coin. Same operations in the
same order as the C++ header; launch the kernels using them with ``enable_fp_fusion=False``
so no multiply-add is fused, and every float32 division goes through float64 (IEEE, and a
correctly rounded float64 quotient rounds to the correctly rounded float32 one), which keeps
the bits equal to CPU, CUDA and the reference.

Unsigned 32-bit keys travel as int64 values in [0, 2^32). Constants read inside kernels are
``tl.constexpr`` objects (a compiled kernel cannot read a plain Python global).
"""

import triton
import triton.language as tl

NAN_KEY = tl.constexpr(0xFFFFFFFF)
INF_KEY = tl.constexpr(0xFF800000)


@triton.jit
def bits_of(x):
    """float32 -> its bit pattern as int64 in [0, 2^32)."""
    return x.to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def float_of(b):
    """int64 in [0, 2^32) -> the float32 with that bit pattern."""
    return b.to(tl.uint32).to(tl.float32, bitcast=True)


@triton.jit
def ordered_key(x, largest: tl.constexpr):
    b = bits_of(x)
    b = tl.where(b == 0x80000000, 0, b)
    up = tl.where(b >= 0x80000000, b ^ 0xFFFFFFFF, b | 0x80000000)
    if largest:
        up = up ^ 0xFFFFFFFF
    return tl.where((b & 0x7FFFFFFF) > 0x7F800000, NAN_KEY, up)


@triton.jit
def random_word(i, stream, seed):
    """Word i % 4 of Philox4x32-10 at counter (i // 4, stream) under seed; int64 in [0, 2^32)."""
    j = i >> 2
    c0 = (j & 0xFFFFFFFF).to(tl.uint32)
    c1 = (j >> 32).to(tl.uint32)
    wide_stream = j * 0 + stream  # int64 whatever the argument's type
    c2 = (wide_stream & 0xFFFFFFFF).to(tl.uint32)
    c3 = (wide_stream >> 32).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    lane = i & 3
    word = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return word.to(tl.int64)


@triton.jit
def uniform_open0(bits):
    return ((bits >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def div_rn(a, b):
    return (a.to(tl.float64) / b.to(tl.float64)).to(tl.float32)


@triton.jit
def neg_log(u):
    ix = bits_of(u) + (0x3F800000 - 0x3F3504F3)
    k = (ix >> 23) - 0x7F
    ix = (ix & 0x007FFFFF) + 0x3F3504F3
    f = float_of(ix) - 1.0
    s = div_rn(f, 2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (0.40000972152 + w * 0.24279078841)
    t2 = z * (0.66666662693 + w * 0.28498786688)
    r = t2 + t1
    hfsq = 0.5 * f * f
    dk = k.to(tl.float32)
    log_u = s * (hfsq + r) + dk * 9.0580006145e-06 - hfsq + f + dk * 6.9313812256e-01
    return 0.0 - log_u


@triton.jit
def exponential_key(weight, bits):
    e = neg_log(uniform_open0(bits))
    safe = tl.where(weight > 0.0, weight, 1.0)
    return tl.where(weight > 0.0, ordered_key(div_rn(e, safe), False), INF_KEY)


@triton.jit
def percentile_coin(below, filled, beta, i, step, seed):
    p = div_rn(below.to(tl.float32), filled.to(tl.float32))
    threshold = beta * neg_log(tl.where(below > 0, p, 1.0))
    draw = neg_log(uniform_open0(random_word(i, step, seed)))
    return (beta == 0.0) | ((below > 0) & (draw > threshold))
