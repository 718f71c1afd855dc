"""Data plumbing of the training loop: every sample carries its dataset index, and a selection
``(indices, weights)`` becomes a deterministic, shardable, resumable stream of indices.

- ``IndexedDataset`` wraps any map-style dataset: ``ds[i] -> (input, target, i)``, so scores,
  weights and loss tables are indexed the same way from the loader to the loss.
- ``Selection`` is what a strategy returns: unique dataset indices and optional positive weights,
  validated against the dataset size; ``weight_table(n)`` spreads the weights over the dataset.
- ``SelectionSampler`` yields a selection's indices, reshuffled each epoch by its own
  ``torch.Generator`` seeded from (seed, epoch) — never the global RNG — padded to a multiple of
  ``num_replicas`` by repeating its start (as ``DistributedSampler``) and split ``rank::replicas``;
  ``resume_at(position)`` restarts an epoch part-way (a killed run resumes where it stopped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler

_MASK64 = (1 << 64) - 1


class IndexedDataset(Dataset):
    """``dataset[i] = (input, target)`` → ``(input, target, i)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


@dataclass(frozen=True)
class Selection:
    """A subset of a dataset of ``n`` samples: ``indices`` int64 ``[k]`` (unique, in ``[0, n)``)
    and ``weights`` float32 ``[k]`` (positive, finite; None: every weight 1)."""

    indices: torch.Tensor
    weights: Optional[torch.Tensor] = None

    @classmethod
    def full(cls, n: int) -> "Selection":
        return cls(torch.arange(n, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.indices.numel())

    def validate(self, n: int) -> "Selection":
        """Itself, on CPU with canonical dtypes, after checking it against a dataset of ``n``."""
        idx = self.indices
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Selection: indices must be a 1-D integer tensor, got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
        idx = idx.to("cpu", torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise ValueError(f"Selection: index {bad} is outside the dataset of {n} samples")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("Selection: indices must be unique (a repeated sample would count twice)")
        weights = self.weights
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or weights.shape != idx.shape:
                raise ValueError(f"Selection: weights must be a tensor of shape {tuple(idx.shape)}, got "
                                 f"{tuple(getattr(weights, 'shape', ()))}")
            weights = weights.to("cpu", torch.float32)
            bad = ~(torch.isfinite(weights) & (weights > 0))
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"Selection: weights must be finite and > 0, got weights[{i}] = {float(weights[i])} "
                                 f"for sample {int(idx[i])}")
        return Selection(idx, weights)

    def weight_table(self, n: int) -> torch.Tensor:
        """float32 ``[n]``: each selected sample's weight, 0 elsewhere."""
        table = torch.zeros(n, dtype=torch.float32)
        table[self.indices] = 1.0 if self.weights is None else self.weights
        return table


class SelectionSampler(Sampler[int]):
    """The selection's indices, one epoch at a time (see the module docstring). ``set_epoch``
    before each epoch; ``set_selection`` takes effect from the next ``__iter__``."""

    def __init__(self, selection: Selection, n: int, *, seed: int, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"SelectionSampler: seed must be an int, got {seed!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"SelectionSampler: rank {rank} is not in [0, num_replicas = {num_replicas})")
        self.n, self.seed, self.shuffle, self.num_replicas, self.rank = n, seed, shuffle, num_replicas, rank
        self.selection = selection.validate(n)
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_selection(self, selection: Selection) -> None:
        self.selection = selection.validate(self.n)

    def resume_at(self, position: int) -> None:
        """The next ``__iter__`` skips this rank's first ``position`` indices of the epoch (once)."""
        if not 0 <= position <= len(self):
            raise ValueError(f"SelectionSampler: resume position {position} is outside this epoch's {len(self)} "
                             "samples")
        self._start = int(position)

    def __len__(self) -> int:
        return math.ceil(len(self.selection) / self.num_replicas) if len(self.selection) else 0

    def order(self) -> torch.Tensor:
        """This epoch's indices for this rank (before any resume offset)."""
        idx = self.selection.indices
        if self.shuffle and idx.numel():
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            idx = idx[torch.randperm(idx.numel(), generator=g)]
        total = len(self) * self.num_replicas
        if total > idx.numel():
            idx = idx.repeat(math.ceil(total / idx.numel()))[:total]
        return idx[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        return iter(self.order()[start:].tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.epoch,
                "indices": self.selection.indices.clone(),
                "weights": None if self.selection.weights is None else self.selection.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"SelectionSampler: the saved {key} = {state[key]!r} differs from this run's "
                                 f"{getattr(self, key)!r}")
        self.selection = Selection(state["indices"], state["weights"]).validate(self.n)
        self.epoch = int(state["epoch"])


def _mix(seed: int, epoch: int) -> int:
    """splitmix64 of (seed, epoch): well-separated generator seeds for consecutive epochs."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)
