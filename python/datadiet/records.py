"""Files datadiet writes and must be able to trust later (checkpoints, selection caches): written
atomically, checksummed, and refused on load when truncated, corrupted, of another kind or format,
or made for another run.

Layout: a fixed header (magic naming the kind, format version, payload length, SHA-256 of the
payload), then the payload, ``torch.save`` of ``{"config": identity, "state": ...}``. ``save`` writes
a temporary file beside the target, fsyncs it, renames it over the target and fsyncs the
directory, so a crash leaves the old file or the new one, never half of one. ``load`` checks the
header, the length and the checksum before unpickling anything (``weights_only=True``), then
compares the saved identity with the caller's, naming every key that differs.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
from typing import Any, Mapping, Optional

import torch

_HEADER = struct.Struct("<8sIQ32s")  # magic, version, payload length, sha256


class RecordError(ValueError):
    """A file that cannot be used: unreadable, damaged, or from another run."""


def save(path: str, state: Mapping[str, Any], identity: Mapping[str, Any], *, magic: bytes, version: int) -> None:
    """Writes ``state`` (tensors, numbers, strings, lists and dicts of them) with ``identity`` (what
    a reader must match) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"config": dict(identity), "state": dict(state)}, buffer)
    payload = buffer.getvalue()
    header = _HEADER.pack(magic, version, len(payload), hashlib.sha256(payload).digest())
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
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


def load(path: str, identity: Optional[Mapping[str, Any]] = None, *, magic: bytes, version: int, what: str,
         error: type = RecordError) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, saved identity)`` of the ``what`` (e.g. "checkpoint") at ``path``; with
    ``identity``, refuses a file whose saved identity differs. Failures raise ``error``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read ({exc.strerror})") from exc
    if len(data) < _HEADER.size or data[:len(magic)] != magic:
        raise error(f"{what} {path}: not a datadiet {what} (no header)")
    _, found, length, digest = _HEADER.unpack_from(data)
    if found != version:
        raise error(f"{what} {path}: format version {found}, this datadiet reads {version}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise error(f"{what} {path}: truncated or padded ({len(payload)} payload bytes, the header says {length})")
    if hashlib.sha256(payload).digest() != digest:
        raise error(f"{what} {path}: checksum mismatch (the file is corrupted)")
    saved = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")  # any device reads it
    if identity is not None:
        differences = _differences(saved["config"], dict(identity), what)
        if differences:
            raise error(f"{what} {path} is from another configuration: " + "; ".join(differences))
    return saved["state"], saved["config"]


def digest(path: str) -> str:
    """The SHA-256 of a record's payload, from its header (what changes when the file is rewritten
    with other contents)."""
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
    return _HEADER.unpack(header)[3].hex()


def _differences(saved: dict, current: dict, what: str) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key not in current:
            out.append(f"{key} = {saved[key]!r} in the {what}, absent from this run")
        elif key not in saved:
            out.append(f"{key} = {current[key]!r} in this run, absent from the {what}")
        elif saved[key] != current[key]:
            out.append(f"{key}: {what} {saved[key]!r}, this run {current[key]!r}")
    return out
