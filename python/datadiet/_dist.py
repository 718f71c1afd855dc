"""torch.distributed helpers shared by the scoring pass and the training loop (no-ops in a
single process): the world, and gathering rows of uneven per-rank length."""

from __future__ import annotations

import torch


def world() -> tuple[int, int]:
    """(world size, rank); (1, 0) without an initialised process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_rows(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Every rank's tensors, concatenated in rank order along dim 0 (lengths may differ by rank);
    each tensor travels padded to the longest rank's length."""
    dist = torch.distributed
    size = world()[0]
    comm = torch.device("cpu") if dist.get_backend() == "gloo" else torch.device(device)
    first = next(iter(tensors.values()))
    length = torch.tensor([first.shape[0]], device=comm)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    lengths = [int(v.item()) for v in lengths]
    out = {}
    for name in sorted(tensors):
        value = tensors[name]
        v = value.to(comm)
        if v.dtype == torch.bool:
            v = v.to(torch.uint8)
        padded = v.new_zeros((max(lengths), *v.shape[1:]))
        padded[:v.shape[0]] = v
        chunks = [torch.zeros_like(padded) for _ in range(size)]
        dist.all_gather(chunks, padded)
        joined = torch.cat([c[:m] for c, m in zip(chunks, lengths)]).to(value.device)
        out[name] = joined.bool() if value.dtype == torch.bool else joined
    return out
