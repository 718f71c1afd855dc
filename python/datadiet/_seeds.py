"""Well-separated generator seeds derived from a run's seed: ``derive_seed(seed, a, b, ...)`` is
splitmix64 over the run seed and a stream of integers (epoch, selection round, ...), so every
random choice has its own explicit generator and none touches the global RNG (``seeded_global_rng``
seeds and restores it for code that can only draw from it)."""

from __future__ import annotations

import contextlib

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, *stream: int) -> int:
    z = seed & _MASK64
    for value in stream or (0,):
        z = (z * 0x9E3779B97F4A7C15 + value + 1) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z = (z ^ (z >> 31)) & _MASK64
    return z & ((1 << 63) - 1)


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """The body runs with torch's global generators seeded from ``seed`` (for code that can only
    draw from them: module initialisation, dropout, torchvision's v2 transforms) and every global
    generator is restored afterwards. Only CUDA devices already initialised are seeded — and
    restored — so a lazily queued seed cannot leak out (``torch.manual_seed`` inside
    ``fork_rng(devices=[])`` would re-seed every GPU for good). Callers on a GPU initialise CUDA
    first (the model is on the device), or GPU draws inside the body are neither seeded nor restored."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        yield
