"""Output folders a run owns, and the files it writes there.

- ``claim(path)`` makes the folder (refusing a path that is a file or cannot be written), takes
  an advisory lock on it for as long as the run lives (``fcntl.flock`` on ``.datadiet.lock``,
  released by the kernel when the process dies, so a killed run never leaves a stale lock) and
  removes the temporary files of writes a killed run left half done. A second claim of the same
  folder is refused at once, naming the holder's pid, except inside a ``shared`` claim of this
  process (a pipeline and the ``Trainer`` it runs write one folder): that inner claim is a no-op.
  ``on_rank0`` claims on rank 0 alone under torchrun, every rank learning the outcome.
- ``previous(path, names)`` lists which of a run kind's result files are already there; the
  caller refuses, reuses or (with ``--overwrite``) ``remove``\\ s them.
- ``write_text`` / ``write_json`` write atomically: a temporary file created beside the target
  with ``O_EXCL`` (so a symlink or file planted under that name is never followed or reused),
  fsynced, then renamed over the target. A crash leaves the old file or the new one.
- JSON is always valid JSON: non-finite floats are written as ``null`` (``finite``), never
  ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import tempfile
import time
import weakref
from typing import Any, Iterable, Optional

LOCK = ".datadiet.lock"
_TMP_PREFIX, _TMP_SUFFIX = ".tmp-", ".part"
_held: dict[str, tuple] = {}  # real path -> (weak reference to this process's claim, shared)
_UMASK = os.umask(0o022)  # read once at import (the only way to read it is to set it) ...
os.umask(_UMASK)  # ... and put back


class RunFolderError(ValueError):
    """An output folder that cannot be used: a file, not writable, in use, or holding results."""


class RunFolder:
    """A claimed folder; ``release()`` (or leaving the ``with`` block) drops the lock."""

    def __init__(self, path: str, fd: int | None, created: bool = False):
        self.path, self._fd, self._created = path, fd, created

    def release(self) -> None:
        if self._fd is None:
            return
        _held.pop(os.path.realpath(self.path), None)
        try:
            if self._created and os.listdir(self.path) == [LOCK]:  # a run that wrote nothing leaves nothing
                os.unlink(os.path.join(self.path, LOCK))
                os.rmdir(self.path)
        except OSError:
            pass  # someone else's file appeared meanwhile: the folder stays
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def claim(path: str, *, option: str = "--out", shared: bool = False) -> RunFolder:
    """Creates and locks ``path`` for this process (module docstring); ``option`` names the flag
    that chose it in the errors; ``shared``: runs this process starts inside may claim it too."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(f"{option} {path}: is a file, not a folder")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{option} {path}: cannot create the folder ({exc.strerror})") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunFolderError(f"{option} {path}: the folder is not writable")
    key = os.path.realpath(path)
    holder, joinable = _held.get(key, (lambda: None, False))
    if holder() is not None:
        if joinable:
            return RunFolder(path, None)  # inside the pipeline that holds it: the outer claim releases it
        raise RunFolderError(f"{option} {path}: in use by another run of this process (pid {os.getpid()}); "
                             "choose another folder")
    lock = os.path.join(path, LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunFolderError(f"{option} {path}: cannot open the lock file {LOCK} ({exc.strerror})") from exc
    try:
        _lock(fd)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderError(f"{option} {path}: cannot lock the folder ({exc.strerror})") from exc
        raise RunFolderError(f"{option} {path}: in use by another datadiet run (pid {holder}); wait for it to "
                             "finish or choose another folder") from None
    folder = RunFolder(path, fd, created)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with os.scandir(path) as entries:  # writes a killed run left half done; we hold the lock
            leftovers = [e.path for e in entries if e.name.startswith(_TMP_PREFIX) and e.name.endswith(_TMP_SUFFIX)
                         and e.is_file(follow_symlinks=False)]
        for leftover in leftovers:
            os.unlink(leftover)
    except OSError as exc:
        folder.release()
        raise RunFolderError(f"{option} {path}: cannot prepare the folder ({exc})") from exc
    _held[key] = (weakref.ref(folder), shared)
    return folder


def _lock(fd: int, orphans_for: float = 30.0) -> None:
    """Takes the folder's lock at once, unless the run that wrote the lock file is dead: then its
    forked children (loader workers share the lock; they notice their parent's death within
    seconds) may still hold it, and the lock is waited for up to ``orphans_for`` seconds."""
    deadline = time.monotonic() + orphans_for
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            holder = _read_pid(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or not holder.isdigit() \
                    or _alive(int(holder)) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def previous(path: str, names: Iterable[str]) -> list[str]:
    """Which of ``names`` (a run kind's result files) exist in ``path``."""
    return [name for name in names if os.path.lexists(os.path.join(path, name))]


def refuse_previous(path: str, found: list[str], *, option: str = "--out", resume: str = "") -> None:
    """The one refusal for a folder holding another run's results; ``resume`` says how to
    continue it where that exists."""
    if found:
        how = f"use {resume} to continue it, " if resume else ""
        raise RunFolderError(f"{option} {path}: holds a previous run ({', '.join(found)}); {how}use --overwrite to "
                             "replace it, or choose another folder")


def remove(path: str, names: Iterable[str], option: str = "--out") -> None:
    """Deletes the result files ``names`` of a previous run (``--overwrite``); nothing else."""
    for name in previous(path, names):
        try:
            os.unlink(os.path.join(path, name))
        except OSError as exc:
            raise RunFolderError(f"{option} {path}: cannot remove the previous {name} ({exc.strerror})") from exc


def differences(saved: dict, current: dict, what: str) -> list[str]:
    """Each key whose value differs between a saved identity and the current one, in words."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key not in current:
            out.append(f"{key} = {saved[key]!r} in the {what}, absent from this run")
        elif key not in saved:
            out.append(f"{key} = {current[key]!r} in this run, absent from the {what}")
        elif saved[key] != current[key]:
            out.append(f"{key}: {what} {saved[key]!r}, this run {current[key]!r}")
    return out


def open_result(path: str, result: str, names: Iterable[str], setting: dict, *, overwrite: bool,
                option: str = "--out", shared: bool = False) -> tuple[RunFolder, Optional[dict]]:
    """Claims ``path`` for a run whose outcome is the JSON file ``result`` (among its files
    ``names``) recording ``setting`` under the key "setting". Returns the folder and, when an
    earlier run of the very same setting finished there, its result (re-running a command reuses
    it); an earlier run of another setting is refused naming the differences, unless
    ``overwrite`` removes its files."""
    folder = claim(path, option=option, shared=shared)
    try:
        if overwrite:
            remove(path, names, option)
        found = previous(path, names)
        if not found:
            return folder, None
        setting = json.loads(dumps(setting))
        try:
            with open(os.path.join(path, result), encoding="utf-8") as f:
                saved = json.load(f)
            differ = differences(saved["setting"], setting, "folder")
        except (OSError, ValueError, KeyError, TypeError):
            refuse_previous(path, found, option=option)
        if differ:
            raise RunFolderError(f"{option} {path}: holds a run of another setting ({'; '.join(differ)}); use "
                                 "--overwrite to replace it, or choose another folder")
        return folder, saved
    except BaseException:
        folder.release()
        raise


@contextlib.contextmanager
def on_rank0(opener):
    """``opener()`` -> (folder, found) on rank 0 alone (``rank0_first``: its refusal is every
    rank's); yields ``found`` (e.g. finished work in the folder) on every rank and releases the
    folder when the block ends. Under torchrun only rank 0 writes into it."""
    from datadiet._dist import rank0_first, world

    claimed = rank0_first(opener, share=lambda opened: opened[1])
    folder, found = claimed if world()[1] == 0 else (None, claimed)
    try:
        yield found
    finally:
        if folder is not None:
            folder.release()


def result_folder(path: Optional[str], result: str, names: Iterable[str], setting: dict, *, overwrite: bool,
                  shared: bool = False):
    """``open_result`` through ``on_rank0``: yields an earlier identical run's result or None (no
    ``path``: nothing is claimed, None)."""
    if not path:
        return contextlib.nullcontext(None)
    return on_rank0(lambda: open_result(path, result, names, setting, overwrite=overwrite, shared=shared))


def write_csv(path: str, rows: list[dict]) -> None:
    """``rows`` as CSV (every key any row has; non-finite numbers empty), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(finite(rows))
    write_text(path, text.getvalue())


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (module docstring)."""
    write_bytes(path, text.encode())


def write_bytes(path: str, *chunks: bytes) -> None:
    """Writes the concatenated ``chunks`` to ``path`` atomically (no joined copy of a large file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp made it 0600: the user's umask decides
            for chunk in chunks:
                f.write(chunk)
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


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, through dicts, lists
    and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """JSON text of ``value``, non-finite floats as ``null`` (strictly valid JSON)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def write_json(path: str, value: Any) -> None:
    write_text(path, dumps(value, indent=1) + "\n")
