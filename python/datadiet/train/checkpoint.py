"""Checkpoints a killed run can trust: written atomically, checksummed, and refused on load when
they are truncated, corrupted, from another format or from another configuration.

File layout: a fixed header (magic, format version, payload length, SHA-256 of the payload), then
the payload, ``torch.save`` of ``{"config": ..., "state": ...}``. ``save`` writes a temporary file
beside the target, fsyncs it, renames it over the target and fsyncs the directory, so a crash
leaves the old checkpoint or the new one, never half of one. ``load`` checks the header, the
length and the checksum before unpickling anything (``weights_only=True``), then compares the
saved configuration with the run's, naming every key that differs.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from typing import Any, Mapping, Optional

import torch

MAGIC = b"DDCKPT\x00\x01"
VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")  # magic, version, payload length, sha256


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, damaged, or from another run."""


def save(path: str, state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Writes ``state`` (tensors, numbers, strings, lists and dicts of them) with the run's
    ``config`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"config": dict(config), "state": dict(state)}, buffer)
    payload = buffer.getvalue()
    header = _HEADER.pack(MAGIC, VERSION, len(payload), hashlib.sha256(payload).digest())
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(path: str, config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The state saved at ``path``; with ``config``, refuses a checkpoint of another configuration."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({exc.strerror})") from exc
    if len(data) < _HEADER.size or data[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"checkpoint {path}: not a datadiet checkpoint (no header)")
    _, version, length, digest = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version}, this datadiet reads {VERSION}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path}: truncated or padded ({len(payload)} payload bytes, the header "
                              f"says {length})")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path}: checksum mismatch (the file is corrupted)")
    saved = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")  # any device resumes it
    if config is not None:
        differences = _differences(saved["config"], dict(config))
        if differences:
            raise CheckpointError(f"checkpoint {path} is from another configuration: " + "; ".join(differences))
    return saved["state"]


def _differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key not in current:
            out.append(f"{key} = {saved[key]!r} in the checkpoint, absent from this run")
        elif key not in saved:
            out.append(f"{key} = {current[key]!r} in this run, absent from the checkpoint")
        elif saved[key] != current[key]:
            out.append(f"{key}: checkpoint {saved[key]!r}, this run {current[key]!r}")
    return out
