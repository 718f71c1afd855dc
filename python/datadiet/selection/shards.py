"""The scoring pass of a selection job in shards, each kept on disk as it finishes, so a killed job
started again with the same command scores only what is missing and selects the same subset.

``ShardedScores(folder, setting, shard_size, score)`` wraps a ``Driver.score``: a pass over the
training pool is cut into shards of ``shard_size`` samples, scored one at a time (host and device
memory of one shard while it is scored; the assembled table is the whole pool's), each written to
``folder/.datadiet-shards/<pass>/NNNNN.npz`` (atomically, plain arrays) with its SHA-256 in
``folder/.datadiet-shards/index.json``. A shard whose file and digest agree is read back
instead of scored. ``setting`` (dataset fingerprint, scorer digest, strategy, shard size) is
recorded in the index: shards of another setting are refused unless the job overwrites them. A
held-out split is small and scored whole.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from typing import Any, Callable

import numpy as np
import torch

from datadiet import runfolder
from datadiet.scores.scoring import ScoreTable
from datadiet.selection.files import sha256

FOLDER = ".datadiet-shards"  # a name no user folder has: removing it never removes the user's files
INDEX = "index.json"


class ShardedScores:
    def __init__(self, folder: str, setting: dict[str, Any], shard_size: int, score: Callable[..., ScoreTable],
                 pool: int, device: torch.device, overwrite: bool = False):
        self.root, self.setting, self.shard_size, self.score, self.pool, self.device = (
            os.path.join(folder, FOLDER), runfolder.finite(setting), shard_size, score, pool, device)
        self.reused = self.scored = 0
        self.index = self._open(overwrite)

    def _open(self, overwrite: bool) -> dict[str, Any]:
        path = os.path.join(self.root, INDEX)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    index = json.load(f)
            except (OSError, ValueError):
                index = None
            if isinstance(index, dict) and index.get("setting") == self.setting:
                return index
            if not overwrite:
                saved = index.get("setting", {}) if isinstance(index, dict) else {}
                differ = runfolder.differences(saved, self.setting, "setting") if isinstance(saved, dict) else []
                raise ValueError(f"select: {self.root} holds the scores of another selection ("
                                 f"{'; '.join(differ[:3]) or 'unreadable index'}); use --overwrite to start over")
            shutil.rmtree(self.root)
        return {"setting": self.setting, "passes": {}}

    def __call__(self, split: str = "train", model=None, **wanted) -> ScoreTable:
        if split != "train":
            return self.score(split=split, model=model, **wanted)
        name = "-".join(sorted(k for k, v in wanted.items() if v is True)) or "scores"
        name += "".join(f"-{k}={v}" for k, v in sorted(wanted.items()) if not isinstance(v, bool))
        done = self.index["passes"].setdefault(name, {})
        parts = []
        for s in range(math.ceil(self.pool / self.shard_size)):
            rows = range(s * self.shard_size, min(self.pool, (s + 1) * self.shard_size))
            key, path = f"{s:05d}", os.path.join(self.root, name, f"{s:05d}.npz")
            table = self._read(path, done.get(key), len(rows))
            if table is None:
                table = self.score(split="train", model=model, rows=rows, **wanted)
                data = _to_npz(table)
                runfolder.write_bytes(path, data)
                done[key] = sha256(data)
                runfolder.write_json(os.path.join(self.root, INDEX), self.index)
                self.scored += 1
            else:
                self.reused += 1
            parts.append(table)
        return _concat(parts, self.device) if parts else self.score(split="train", model=model, **wanted)

    @staticmethod
    def _read(path: str, digest, rows: int):
        """The shard at ``path`` if its bytes match ``digest`` and it holds ``rows`` rows, else None."""
        if digest is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            data = f.read()
        if sha256(data) != digest:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            table = ScoreTable(**{k: torch.from_numpy(arrays[k].copy()) for k in arrays.files})
        return table if len(table) == rows else None

    def remove(self) -> None:
        """Drops the shards once the subset is written (``scores.npz`` keeps what they held)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _to_npz(table: ScoreTable) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().cpu().numpy() for k, v in vars(table).items() if v is not None})
    return buffer.getvalue()


def _concat(parts: list[ScoreTable], device: torch.device) -> ScoreTable:
    """One table on the scoring device, as an unsharded pass returns it."""
    names = [k for k, v in vars(parts[0]).items() if v is not None]
    return ScoreTable(**{k: torch.cat([getattr(p, k).to(device) for p in parts]) for k in names})
