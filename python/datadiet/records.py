"""Files datadiet writes and must be able to trust later (checkpoints, selection caches): written
atomically, checksummed, and refused on load when truncated, corrupted, of another kind or format,
or made for another run.

Layout: a fixed header (magic naming the kind, format version, payload length, SHA-256 of the
payload), then the payload, ``torch.save`` of ``{"config": identity, "state": ...}``. ``save`` writes
it atomically (``runfolder.write_bytes``: a fresh temporary file beside the target, fsynced,
renamed over it), so a crash leaves the old file or the new one, never half of one. ``load``
checks the header, the length and the checksum before unpickling anything (``weights_only=True``), then
compares the saved identity with the caller's, naming every key that differs.
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import Any, Mapping, Optional

import torch

from datadiet import runfolder

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
    runfolder.write_bytes(path, header, payload)


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
        differences = runfolder.differences(saved["config"], dict(identity), what)
        if differences:
            raise error(f"{what} {path} is from another configuration: " + "; ".join(differences))
    return saved["state"], saved["config"]


def digest(path: str) -> str:
    """The SHA-256 of a record's payload, from its header (what changes when the file is rewritten
    with other contents)."""
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
    return _HEADER.unpack(header)[3].hex()
