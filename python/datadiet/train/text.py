"""``text:stdlib``: a byte-level language-modelling dataset from text every Python ships, the
standard library's own source files.

The files are the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (test suites, IDLE,
tkinter demos, ``lib2to3`` and installed packages left out), in sorted path order; a file is a
test file when the first byte of the SHA-256 of its path relative to that folder is below 26
(about 10%), so the split is by file and fixed for a given Python release. Each split's files are
joined (each followed by a newline) and cut into consecutive, non-overlapping windows of
``context + 1`` bytes: sample i is ``(x, y)`` = (bytes ``[0, context)`` of window i, bytes
``[1, context]``), int64 token ids in [0, 256). ``text:stdlib:N`` keeps the first N training
bytes (and N / 8 test bytes): a smaller corpus for quick runs and tests; ``text:stdlib`` keeps
2 MiB (32,768 training sequences of 64 bytes).

The task is ``"language"``: a sample's loss is the mean next-byte cross-entropy over its
sequence, the model's output ``[batch, context, 256]``, the metric perplexity = exp(mean test
loss). Every sample belongs to one group (label 0): strategies that rank by class or score
with classification scores are refused, the random, InfoBatch and per-batch ones apply.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig

import torch
from torch.utils.data import Dataset

CONTEXT = 64
DEFAULT_BYTES = 1 << 21
VOCAB = 256
_LEFT_OUT = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo",
             "ensurepip", "tkinter"}


def stdlib_files() -> list[str]:
    """The standard library's ``.py`` files (paths relative to its folder), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _LEFT_OUT)
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if n.endswith(".py")]
    return sorted(found)


def is_test_file(relative: str) -> bool:
    return hashlib.sha256(relative.encode()).digest()[0] < 26


class ByteSequences(Dataset):
    """Windows of ``context + 1`` bytes as (input, next-byte target) pairs."""

    def __init__(self, data: bytes, context: int = CONTEXT):
        windows = len(data) // (context + 1)
        raw = torch.frombuffer(bytearray(data[:windows * (context + 1)]), dtype=torch.uint8)
        self.windows = raw.view(windows, context + 1)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int):
        w = self.windows[i].long()
        return w[:-1], w[1:]


def load_stdlib(spec: str, train_bytes: int = DEFAULT_BYTES, context: int = CONTEXT):
    """The ``DataBundle`` of ``text:stdlib[:N]`` (module docstring)."""
    from datadiet.train.datasets import DataBundle

    root = sysconfig.get_paths()["stdlib"]
    splits: dict[str, list[bytes]] = {"train": [], "test": []}
    sizes = {"train": 0, "test": 0}
    limits = {"train": train_bytes, "test": max(context + 1, train_bytes // 8)}
    for relative in stdlib_files():
        split = "test" if is_test_file(relative) else "train"
        if sizes[split] >= limits[split]:
            continue
        with open(os.path.join(root, relative), "rb") as f:
            data = f.read() + b"\n"
        splits[split].append(data)
        sizes[split] += len(data)
    if sizes["train"] < limits["train"] or sizes["test"] < context + 1:
        raise ValueError(f"dataset {spec!r}: the standard library in {root} holds {sizes['train']} training bytes, "
                         f"fewer than the {limits['train']} asked for")
    train = ByteSequences(b"".join(splits["train"])[:limits["train"]], context)
    test = ByteSequences(b"".join(splits["test"])[:limits["test"]], context)
    return DataBundle(train, train, test, VOCAB, (context,), torch.zeros(len(train), dtype=torch.int64),
                      task="language")
