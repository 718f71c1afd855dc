"""Reference selection ops in plain PyTorch, on any device: a full stable sort instead of a
radix select, and the random keys of ``csrc/ops/select/select_math.h`` written with int64 and
float32 tensor ops (one rounding per operation, like the kernels), so the reference draws
bit-identical samples. Slow; the tests' oracle and the ``backend="torch"`` path.

Unsigned 32-bit words are held in int64 tensors.
"""

from __future__ import annotations

from typing import Sequence

import torch

_MASK32 = 0xFFFFFFFF
NAN_KEY = 0xFFFFFFFF
INF_KEY = 0xFF800000


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of the 64-bit product of a 32-bit constant and 32-bit words, without
    int64 overflow: split a into 16-bit halves."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    high = a_hi * b
    low = a_lo * b
    hi = (high + (low >> 16)) >> 16
    lo = (((high & 0xFFFF) << 16) + low) & _MASK32
    return hi, lo


def philox4(counter: torch.Tensor, stream: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The four output words of Philox4x32-10 for each counter (int64 tensor), as int64."""
    seed &= (1 << 64) - 1
    stream &= (1 << 64) - 1
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = torch.full_like(counter, stream & _MASK32)
    c3 = torch.full_like(counter, stream >> 32)
    k0, k1 = seed & _MASK32, seed >> 32
    for _ in range(10):
        hi_b, lo_b = _mul32(0xCD9E8D57, c2)
        hi_a, lo_a = _mul32(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return c0, c1, c2, c3


def random_word(idx: torch.Tensor, stream: int, seed: int) -> torch.Tensor:
    """Element i's word: word i % 4 of Philox for counter i // 4."""
    words = torch.stack(philox4(idx >> 2, stream, seed), dim=-1)
    return words.gather(-1, (idx & 3).unsqueeze(-1)).squeeze(-1)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32).to(torch.int64) & _MASK32


def _from_bits(b: torch.Tensor) -> torch.Tensor:
    return torch.where(b >= 1 << 31, b - (1 << 32), b).to(torch.int32).view(torch.float32)


def uniform_open0(bits: torch.Tensor) -> torch.Tensor:
    return ((bits >> 8) + 1).to(torch.float32) * 5.9604644775390625e-08


def neg_log(u: torch.Tensor) -> torch.Tensor:
    """-log(u) for float32 u in [2^-24, 1], musl's logf in the kernels' evaluation order."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=u.device)  # noqa: E731
    ln2_hi, ln2_lo = f32(6.9313812256e-01), f32(9.0580006145e-06)
    lg1, lg2, lg3, lg4 = f32(0.66666662693), f32(0.40000972152), f32(0.28498786688), f32(0.24279078841)
    ix = (_bits(u) + (0x3F800000 - 0x3F3504F3)) & _MASK32
    k = (ix >> 23) - 0x7F
    ix = (ix & 0x007FFFFF) + 0x3F3504F3
    f = _from_bits(ix) - f32(1.0)
    s = f / (f32(2.0) + f)
    z = s * s
    w = z * z
    t1 = w * (lg2 + w * lg4)
    t2 = z * (lg1 + w * lg3)
    r = t2 + t1
    hfsq = f32(0.5) * f * f
    dk = k.to(torch.float32)
    log_u = s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi
    return f32(0.0) - log_u


def ordered_keys(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """Unsigned keys (int64) ascending in value (descending when ``largest``), NaN last, -0 == +0."""
    b = _bits(values.float())
    b = torch.where(b == 0x80000000, torch.zeros_like(b), b)
    up = torch.where(b >= 0x80000000, b ^ _MASK32, b | 0x80000000)
    key = up ^ _MASK32 if largest else up
    return torch.where((b & 0x7FFFFFFF) > 0x7F800000, torch.full_like(key, NAN_KEY), key)


def exponential_keys(weights: torch.Tensor, seed: int) -> torch.Tensor:
    """Ordered keys of E_i / w_i, E_i = -log(uniform(philox(i))); +inf key for w_i = 0."""
    w = weights.float()
    idx = torch.arange(w.numel(), device=w.device, dtype=torch.int64)
    e = neg_log(uniform_open0(random_word(idx, 0, seed)))
    keys = ordered_keys(e / w, largest=False)
    return torch.where(w > 0, keys, torch.full_like(keys, INF_KEY))


def select_smallest(keys: torch.Tensor, offsets: Sequence[int], ks: Sequence[int]) -> torch.Tensor:
    """Per segment, the global indices of the k smallest (key, index), in that order."""
    counts = torch.tensor([b - a for a, b in zip(offsets[:-1], offsets[1:])], device=keys.device)
    segment = torch.repeat_interleave(torch.arange(len(ks), device=keys.device), counts)
    order = torch.sort(segment * (1 << 32) + keys, stable=True).indices
    picks = [order[a:a + k] for a, k in zip(offsets[:-1], ks)]
    return torch.cat(picks) if picks else keys.new_empty((0,))


def topk_select_reference(scores: torch.Tensor, offsets: Sequence[int], ks: Sequence[int],
                          largest: bool) -> torch.Tensor:
    return select_smallest(ordered_keys(scores, largest), offsets, ks)


def weighted_sample_reference(weights: torch.Tensor, offsets: Sequence[int], ks: Sequence[int],
                              seed: int) -> torch.Tensor:
    return select_smallest(exponential_keys(weights, seed), offsets, ks)


def percentile_coin(below: torch.Tensor, filled: int, beta: float, step: int, seed: int) -> torch.Tensor:
    if beta == 0.0:
        return torch.ones_like(below, dtype=torch.bool)
    p = below.to(torch.float32) / torch.tensor(float(filled), dtype=torch.float32, device=below.device)
    threshold = torch.tensor(beta, dtype=torch.float32, device=below.device) * neg_log(p.clamp_min(2.0 ** -126))
    idx = torch.arange(below.numel(), device=below.device, dtype=torch.int64)
    draw = neg_log(uniform_open0(random_word(idx, step, seed)))
    return (below > 0) & (draw > threshold)


def selective_backprop_keep_reference(losses: torch.Tensor, history: torch.Tensor, state: torch.Tensor,
                                      beta: float, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutates ``history`` and ``state`` like the kernels; returns (keep, percentile)."""
    n, r = losses.numel(), history.numel()
    pos, filled = (int(v) for v in state.tolist())
    first = max(0, n - r)  # only the last r losses survive; their slots are distinct
    history[(pos + torch.arange(first, n, device=history.device)) % r] = losses[first:]
    state[0] = (pos + n) % r
    state[1] = filled = min(filled + n, r)
    below = (history[:filled].unsqueeze(0) < losses.unsqueeze(1)).sum(1)
    percentile = below.to(torch.float32) / torch.tensor(float(filled), dtype=torch.float32, device=losses.device)
    return percentile_coin(below, filled, float(beta), step, seed), percentile
