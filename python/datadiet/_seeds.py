"""Well-separated generator seeds derived from a run's seed: ``derive_seed(seed, a, b, ...)`` is
splitmix64 over the run seed and a stream of integers (epoch, selection round, ...), so every
random choice has its own explicit generator and none touches the global RNG."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, *stream: int) -> int:
    z = seed & _MASK64
    for value in stream or (0,):
        z = (z * 0x9E3779B97F4A7C15 + value + 1) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z = (z ^ (z >> 31)) & _MASK64
    return z & ((1 << 63) - 1)
