"""The Cached-GradMatch study's Cached-GradMatch: a GradMatch run with ``cache=PATH`` records every selection round
— its epochs, indices and weights — and a ``cached_gradmatch`` run replays them at the same
epochs, under another learning rate, optimiser or architecture, with no scoring and no solver.

The cache is a ``datadiet.records`` file (atomic, SHA-256-checked): its identity is what a replay
must match — the pool size, a fingerprint of the labels, the fraction, ``every`` (R) and the
warm-up epochs — and it describes the producing run (its strategy and configuration). The
recorder rewrites the whole file after each round, so a killed producer leaves a valid cache of
the rounds made so far; a replay that needs a round the cache lacks is refused at set-up.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from datadiet import records
from datadiet.select.selection import Selection
from datadiet.strategies.base import Periodic

MAGIC = b"DDSELC\x00\x01"
VERSION = 1


class CacheError(records.RecordError):
    """A selection cache that cannot be replayed: unreadable, damaged, or from another setting."""


def labels_fingerprint(labels: torch.Tensor) -> str:
    """A digest of the pool's labels in order (another dataset, split or ordering differs)."""
    return hashlib.sha256(labels.to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def cache_identity(strategy: Periodic) -> dict[str, Any]:
    """What a replay must share with the recording run (``strategy`` is set up)."""
    ctx = strategy.context
    return {"kind": "gradmatch selections", "n": ctx.n, "labels": labels_fingerprint(ctx.labels),
            "fraction": strategy.fraction, "every": strategy.every, "warm_epochs": strategy.warm_epochs}


class SelectionRecorder:
    """Appends ``(start epoch, end epoch, indices, weights)`` per round and rewrites the cache."""

    def __init__(self, path: str, strategy: Periodic):
        self.path, self.identity = path, cache_identity(strategy)
        self.producer = {"strategy": strategy.describe(), "run": dict(strategy.context.run)}
        self.write = strategy.context.rank == 0  # every rank selects the same; rank 0's file
        self.rounds: list[dict] = []
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or (os.path.isdir(folder) and not os.access(folder, os.W_OK)):
            raise ValueError(f"gradmatch: cache = {path!r} cannot be written (a folder, or in a read-only one)")

    def add(self, epoch: int, end: int, selection: Selection) -> None:
        self.rounds = [r for r in self.rounds if r["start"] < epoch]  # a resumed run re-records from here
        self.rounds.append({"start": epoch, "end": end, "indices": selection.indices.cpu(),
                            "weights": None if selection.weights is None else selection.weights.cpu()})
        if self.write:
            records.save(self.path, {"rounds": self.rounds, "producer": self.producer}, self.identity, magic=MAGIC,
                         version=VERSION)


def read_cache(path: str, identity: Optional[dict] = None) -> tuple[list[dict], dict]:
    """``(rounds, producer)`` of the cache at ``path``, refused when its identity differs."""
    state, _ = records.load(path, identity, magic=MAGIC, version=VERSION, what="selection cache", error=CacheError)
    return state["rounds"], state["producer"]


@dataclass
class CachedGradMatch(Periodic):
    """Replays the selection rounds a ``gradmatch`` run recorded in ``cache`` at the same epochs
    (``fraction``, ``every`` and ``warm`` must match the recording; each round's weights are
    GradMatch's). Selection costs one table look-up."""

    name = "cached_gradmatch"
    every: Optional[int] = 20
    cache: Optional[str] = None
    _rounds: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.cache:
            raise ValueError(f"cached_gradmatch: cache must name the file a gradmatch run recorded (--cache PATH), "
                             f"got {self.cache!r}")

    def setup(self, context) -> None:
        super().setup(context)
        rounds, self.producer = read_cache(self.cache, cache_identity(self))
        self.digest = records.digest(self.cache)
        self._rounds = {int(r["start"]): r for r in rounds}
        needed = [e for e in range(self.warm_epochs, context.epochs) if self.selects_at(e)]
        missing = [e for e in needed if e not in self._rounds]
        if missing:
            raise CacheError(f"selection cache {self.cache}: this run selects at epochs {needed}, the cache holds "
                             f"rounds at {sorted(self._rounds)} (missing {missing}; was the recording run shorter "
                             f"or killed?)")
        for r in self._rounds.values():
            try:
                Selection(r["indices"], r["weights"]).validate(context.n)
            except ValueError as exc:
                raise CacheError(f"selection cache {self.cache}: the round at epoch {r['start']} is invalid ({exc})") \
                    from exc

    def reselects_every(self) -> Optional[int]:
        return None  # the recorded rounds' epochs, never stretched (and a look-up costs nothing)

    def state_dict(self) -> dict:
        return {"cache_digest": self.digest}

    def load_state_dict(self, state: dict) -> None:
        if state["cache_digest"] != self.digest:  # the file was re-recorded since the checkpoint
            raise CacheError(f"selection cache {self.cache} changed since this run's checkpoint (SHA-256 "
                             f"{state['cache_digest'][:16]}... then, {self.digest[:16]}... now): resuming would "
                             "replay other rounds")

    def choose(self, epoch: int) -> Selection:
        r = self._rounds[epoch]
        self._last = {"round": self.round(epoch), "size": int(r["indices"].numel()), "cached_from": r["start"]}
        return Selection(r["indices"], r["weights"])
