"""The scoring pass of a selection job in shards, each kept on disk as it finishes, so a killed job
started again with the same command scores only what is missing and selects the same subset, and
so torchrun's ranks can share the pass without holding each other's rows.

``ShardedScores(folder, setting, shard_size, score, stream, pool, device)`` stands in for a
``Driver``'s ``score``: a pass over the training pool is cut into shards of ``shard_size``
samples, each written to ``folder/.datadiet-shards/<pass>/NNNNN.npz`` (atomically, plain arrays)
and then its SHA-256 to ``NNNNN.sha256`` beside it. A shard whose file matches its digest is read
back instead of scored. The missing shards are scored through one loader (``Driver.score_shards``:
workers start once per pass; batches never span shards, so a shard's rows do not depend on which
process scored it or what was scored with it).

Under torchrun (``world`` > 1) rank 0 lists the missing shards and deals them round the ranks
(one broadcast); each rank scores its own with no collective; rank 0 then waits for every shard's digest to appear (polling the folder, so no
process-group timeout applies to a long pass), assembles the table and returns it, while the
other ranks raise ``ShardsDone``: their part of the job is over. A held-out split is small and
scored whole by the rank that asks.

``setting`` (dataset fingerprint, scorer digest, strategy, shard size, ...) is recorded in
``index.json`` by rank 0 before any shard is scored: shards of another setting are refused
unless the job overwrites them.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from datadiet import runfolder
from datadiet._dist import rank0_first
from datadiet.scores.scoring import ScoreTable
from datadiet.selection.files import sha256

FOLDER = ".datadiet-shards"  # a name no user folder has: removing it never removes the user's files
INDEX = "index.json"


class ShardsDone(Exception):
    """Raised on ranks other than 0 once their shards of the pass are on disk."""


class ShardedScores:
    def __init__(self, folder: str, setting: dict[str, Any], shard_size: int, score: Callable[..., ScoreTable],
                 stream: Callable[..., Iterator[tuple[int, ScoreTable]]], pool: int, device: torch.device, *,
                 overwrite: bool = False, rank: int = 0, world: int = 1, poll: float = 0.5):
        self.root, self.setting, self.shard_size = os.path.join(folder, FOLDER), runfolder.finite(setting), shard_size
        self.score, self.stream, self.pool, self.device = score, stream, pool, device
        self.rank, self.world, self.poll = rank, world, poll
        self.reused = self.scored = self.scored_samples = 0
        self.wall = 0.0  # every pass's wall time on this rank, waiting for other ranks included
        self.train_wall = 0.0
        self._passes = 0
        told = rank0_first(lambda: self._open(overwrite), share=lambda opened: opened)
        if rank != 0:
            self._check_shared(told)

    def _open(self, overwrite: bool) -> dict[str, Any]:
        """Rank 0: keeps the shards of this setting, refuses (or with ``overwrite`` drops) others;
        writes the index with a fresh token, which the other ranks read back (``_check_shared``)."""
        path = os.path.join(self.root, INDEX)
        opened, same = {"setting": self.setting, "token": secrets.token_hex(16)}, False
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    index = json.load(f)
            except (OSError, ValueError):
                index = None
            same = isinstance(index, dict) and index.get("setting") == self.setting
            if not same and not overwrite:
                saved = index.get("setting", {}) if isinstance(index, dict) else {}
                differ = runfolder.differences(saved, self.setting, "setting") if isinstance(saved, dict) else []
                raise ValueError(f"select: {self.root} holds the scores of another selection ("
                                 f"{'; '.join(differ[:3]) or 'unreadable index'}); use --overwrite to start over")
        if not same and os.path.isdir(self.root):  # no index of this setting: nothing there to keep
            shutil.rmtree(self.root)
        runfolder.write_json(path, opened)
        return opened

    def _check_shared(self, opened: dict[str, Any]) -> None:
        """Another rank: sees rank 0's index in the folder (a filesystem every rank shares) and
        has rank 0's setting (the same data and scorer)."""
        try:
            with open(os.path.join(self.root, INDEX), encoding="utf-8") as f:
                seen = json.load(f).get("token")
        except (OSError, ValueError, AttributeError):
            seen = None
        if seen != opened["token"]:
            raise ValueError(f"select: rank {self.rank} does not see the files rank 0 writes in {self.root}: under "
                             "torchrun --out must be on a filesystem every rank shares")
        if opened["setting"] != self.setting:
            differ = runfolder.differences(opened["setting"], self.setting, "setting")
            raise ValueError(f"select: rank {self.rank} scores another setting than rank 0 ({'; '.join(differ[:3])})")

    def shards(self) -> list[range]:
        return [range(s * self.shard_size, min(self.pool, (s + 1) * self.shard_size))
                for s in range(math.ceil(self.pool / self.shard_size))]

    def __call__(self, split: str = "train", model=None, **wanted) -> ScoreTable:
        began = time.perf_counter()
        if split != "train":
            table = self.score(split=split, model=model, **wanted)
            self.wall += time.perf_counter() - began
            return table
        name = "-".join(sorted(k for k, v in wanted.items() if v is True)) or "scores"
        name += "".join(f"-{k}={v}" for k, v in sorted(wanted.items()) if not isinstance(v, bool))
        shards = self.shards()
        paths = [os.path.join(self.root, name, f"{s:05d}.npz") for s in range(len(shards))]
        if self.world > 1 and self._passes:  # the other ranks left after the first: nobody would score it
            raise RuntimeError("select: this strategy scores the training pool twice; under torchrun a selection "
                               "job scores it once")
        self._passes += 1
        tables, missing = [], []
        if self.rank == 0:  # rank 0 decides what is missing (the others would race their own writes)
            tables = [self._read(path, len(rows)) for path, rows in zip(paths, shards)]
            missing = [s for s, table in enumerate(tables) if table is None]
        missing = self._agree(missing)
        self.reused, self.scored = len(shards) - len(missing), len(missing)
        self.scored_samples = sum(len(shards[s]) for s in missing)
        mine = missing[self.rank::self.world]  # dealt round the ranks: none idle while others score two
        if mine:
            for position, table in self.stream([shards[s] for s in mine], model=model, **wanted):
                s = mine[position]
                data = _to_npz(table)
                runfolder.write_bytes(paths[s], data)
                runfolder.write_bytes(paths[s][:-len(".npz")] + ".sha256", sha256(data).encode())
                if self.rank == 0:
                    tables[s] = table
        if self.rank != 0:
            raise ShardsDone
        waited = time.monotonic()
        for s in missing:  # the other ranks' shards, as they appear
            while tables[s] is None:
                tables[s] = self._read(paths[s], len(shards[s]))
                if tables[s] is None:
                    if time.monotonic() - waited > 600:
                        print(f"select: rank 0 still waits for shard {s} of {len(shards)} from rank "
                              f"{missing.index(s) % self.world}", file=sys.stderr, flush=True)
                        waited = time.monotonic()
                    time.sleep(self.poll)
        self.train_wall = time.perf_counter() - began
        self.wall += self.train_wall
        return _concat(tables, self.device)

    def _agree(self, missing: list[int]) -> list[int]:
        """Rank 0's list of the missing shards, on every rank (one broadcast)."""
        if self.world == 1:
            return missing
        box = [missing]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @staticmethod
    def _read(path: str, rows: int):
        """The shard at ``path`` if its digest file is there, its bytes match it and it holds
        ``rows`` rows, else None."""
        try:
            with open(path[:-len(".npz")] + ".sha256", encoding="ascii") as f:
                digest = f.read().strip()
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, UnicodeDecodeError):
            return None
        if sha256(data) != digest:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                table = ScoreTable(**{k.removesuffix(_BF16): _tensor(arrays[k], k.endswith(_BF16))
                                      for k in arrays.files})
        except (ValueError, TypeError, OSError):
            return None
        return table if len(table) == rows else None

    def remove(self) -> None:
        """Drops the shards once the subset is written (``scores.npz`` keeps what they held)."""
        shutil.rmtree(self.root, ignore_errors=True)


_BF16 = "__bfloat16"  # numpy has no bfloat16: such a column is stored as its int16 bit patterns


def _to_npz(table: ScoreTable) -> bytes:
    buffer = io.BytesIO()
    columns = {}
    for k, v in vars(table).items():
        if v is not None:
            v = v.detach().cpu()
            columns[k + _BF16 if v.dtype == torch.bfloat16 else k] = (
                v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy()
    np.savez(buffer, **columns)
    return buffer.getvalue()


def _tensor(array: np.ndarray, bf16: bool) -> torch.Tensor:
    """A stored column as a tensor (a ``_BF16`` column back from its bit patterns)."""
    if bf16 and array.dtype != np.int16:
        raise ValueError("a bfloat16 column must hold int16 bit patterns")
    value = torch.from_numpy(array.copy())
    return value.view(torch.bfloat16) if bf16 else value


def _concat(parts: list[ScoreTable], device: torch.device) -> ScoreTable:
    """One table on the scoring device, as an unsharded pass returns it, filled shard by shard and
    each shard let go once copied (so the peak is the table and one shard, not twice the table)."""
    if not parts:
        raise ValueError("select: the training pool is empty: nothing to score")
    names = [k for k, v in vars(parts[0]).items() if v is not None]
    n = sum(len(p) for p in parts)
    out = {k: getattr(parts[0], k).new_empty((n, *getattr(parts[0], k).shape[1:]), device=device) for k in names}
    start = 0
    for s in range(len(parts)):
        part, parts[s] = parts[s], None
        for k in names:
            out[k][start:start + len(part)] = getattr(part, k)
        start += len(part)
    return ScoreTable(**out)
