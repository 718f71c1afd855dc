"""Checkpoints a killed run can trust (``datadiet.records``): written atomically, checksummed, and
refused on load when they are truncated, corrupted, from another format or from another
configuration (each differing key named)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from datadiet import records

MAGIC = b"DDCKPT\x00\x01"
VERSION = 1


class CheckpointError(records.RecordError):
    """A checkpoint that cannot be used: unreadable, damaged, or from another run."""


def save(path: str, state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Writes ``state`` with the run's ``config`` to ``path`` atomically."""
    records.save(path, state, config, magic=MAGIC, version=VERSION)


def load(path: str, config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The state saved at ``path``; with ``config``, refuses a checkpoint of another configuration."""
    return records.load(path, config, magic=MAGIC, version=VERSION, what="checkpoint", error=CheckpointError)[0]
