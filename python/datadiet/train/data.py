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
from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from datadiet._seeds import derive_seed
from datadiet.scores.indexed import IndexedDataset  # noqa: F401  (re-exported: the loop's data plumbing)
from datadiet.select.selection import Selection

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
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
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
