"""A selected subset on disk, readable by any training pipeline.

A selection folder holds three files, written atomically (``datadiet.runfolder``), the manifest
last, so a folder with a manifest is complete:

- ``subset.csv``: one row per selected sample, in dataset order: ``index`` (the sample's index in
  the dataset's training split), ``id`` (its file path for an image folder, else the index again),
  ``label`` and ``weight`` (the sample's loss weight; 1 for unweighted strategies). Plain CSV: a
  tool that never imports datadiet can read the file list.
- ``scores.npz``: every sample's scores in dataset order, one float32 array per score (``loss``,
  ``el2n``, ``grand``, ...; empty for strategies that score nothing). Read with
  ``numpy.load(..., allow_pickle=False)``: it holds plain arrays only.
- ``manifest.json``: the dataset (spec, sample count, fingerprint), the model and its weights'
  digest, the strategy and its parameters, the fraction, per-stage times, the scoring
  throughput, library versions, and the SHA-256 of the two files above.

``load(folder)`` checks the manifest's format, both digests and every row (indices in range and
unique, finite non-negative weights) before returning anything; a damaged or edited file is
refused with a one-line error naming it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, SubsetRandomSampler

from datadiet import runfolder

FORMAT = "datadiet-subset/1"
SUBSET, SCORES, MANIFEST = "subset.csv", "scores.npz", "manifest.json"
FILES = (SUBSET, SCORES, MANIFEST)
COLUMNS = ("index", "id", "label", "weight")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_fingerprint(dataset: Dataset, labels: torch.Tensor) -> dict[str, Any]:
    """What identifies a training split: its size and a digest of its labels and of its file list
    (image folders: paths relative to the root), its tensors (in-memory datasets) or its ``data``
    array (CIFAR-10's images). A dataset that is none of these is identified by size and labels
    alone (``"by": "labels"``)."""
    digest = hashlib.sha256()
    digest.update(labels.to(torch.int64).cpu().contiguous().numpy().tobytes())
    samples = getattr(dataset, "samples", None)
    tensors = getattr(dataset, "tensors", None)
    data = getattr(dataset, "data", None)
    if samples is not None:
        root = getattr(dataset, "root", "")
        for path, _ in samples:
            digest.update(os.path.relpath(path, root).encode("utf-8", "surrogatepass") + b"\0")
        by = "files"
    elif tensors is not None or isinstance(data, (torch.Tensor, np.ndarray)):
        for t in tensors if tensors is not None else (torch.as_tensor(data),):
            # hashed from the tensor's own memory (no copy of a contiguous CPU tensor)
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        by = "tensors"
    else:
        by = "labels"
    return {"samples": int(labels.numel()), "by": by, "sha256": digest.hexdigest()}


def sample_ids(dataset: Dataset, indices: Sequence[int]) -> list[str]:
    """File paths of an image folder's samples, a features file's ``ids``, else the indices as text."""
    samples, ids = getattr(dataset, "samples", None), getattr(dataset, "ids", None)
    if samples is not None:
        return [samples[i][0] for i in indices]
    if ids is not None:
        return [ids[i] for i in indices]
    return [str(i) for i in indices]


def subset_csv(indices: torch.Tensor, ids: Sequence[str], labels: torch.Tensor, weights: torch.Tensor) -> bytes:
    """The CSV bytes, rows in dataset order (weights as shortest round-trip decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # so a name holding \r or \n is quoted
    writer.writerow(COLUMNS)
    order = torch.argsort(indices)
    for j in order.tolist():
        writer.writerow((int(indices[j]), ids[j], int(labels[j]), repr(float(weights[j]))))
    return out.getvalue().encode("utf-8", "surrogateescape")  # a non-UTF-8 file name keeps its bytes


def scores_npz(scores: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: t.detach().float().cpu().numpy() for name, t in scores.items()})
    return buffer.getvalue()


def write(folder: str, *, indices: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, ids: Sequence[str],
          scores: dict[str, torch.Tensor], manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes the three files (the manifest last, with the others' digests); returns the manifest.
    ``labels`` and ``ids`` are those of the selected samples, aligned with ``indices``."""
    table = subset_csv(indices, ids, labels, weights)
    npz = scores_npz(scores)
    runfolder.write_bytes(os.path.join(folder, SUBSET), table)
    runfolder.write_bytes(os.path.join(folder, SCORES), npz)
    full = {"format": FORMAT, **manifest, "size": int(indices.numel()),
            "files": {SUBSET: sha256(table), SCORES: sha256(npz)}}
    runfolder.write_json(os.path.join(folder, MANIFEST), full)
    return full


@dataclass
class SelectedSubset:
    """A selection folder, checked: ``indices`` (int64, dataset order) and ``weights`` (float32) of
    the selected samples, their ``labels`` and ``ids``, the ``manifest`` and the ``scores``
    (name → float32 array over the whole dataset)."""

    folder: str
    indices: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    manifest: dict[str, Any]
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        """Samples in the dataset the subset was selected from."""
        return int(self.manifest["dataset"]["samples"])

    def subset(self, dataset: Dataset) -> Subset:
        """``dataset`` (the same training split) restricted to the selected samples."""
        if len(dataset) != self.samples:  # type: ignore[arg-type]
            raise ValueError(f"selection {self.folder}: selected from {self.samples} samples, this dataset has "
                             f"{len(dataset)}")  # type: ignore[arg-type]
        return Subset(dataset, self.indices.tolist())

    def sampler(self, generator: Optional[torch.Generator] = None) -> SubsetRandomSampler:
        """The selected indices in a random order each epoch (pass a seeded ``generator`` for a
        reproducible order); weight the loss with ``weights`` where they are not all 1."""
        return SubsetRandomSampler(self.indices.tolist(), generator=generator)


def _refuse(folder: str, name: str, what: str) -> ValueError:
    return ValueError(f"selection {folder}: {name} {what}")


def _read(folder: str, name: str) -> bytes:
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise _refuse(folder, name, "is missing (not a complete datadiet selection folder)") from None
    except OSError as exc:
        raise _refuse(folder, name, f"cannot be read ({exc.strerror})") from None


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of a selection folder, its format checked."""
    if not os.path.isdir(folder):
        raise ValueError(f"selection {folder}: no such folder")
    text = _read(folder, MANIFEST)
    try:
        manifest = json.loads(text.decode("utf-8"), parse_constant=lambda c: None)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(folder, MANIFEST, f"is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise _refuse(folder, MANIFEST, f"has format {found!r}; expected {FORMAT!r}")
    dataset, files = manifest.get("dataset"), manifest.get("files")
    if not (isinstance(dataset, dict) and isinstance(dataset.get("samples"), int) and dataset["samples"] >= 0
            and isinstance(files, dict) and all(isinstance(files.get(n), str) for n in (SUBSET, SCORES))):
        raise _refuse(folder, MANIFEST, "lacks the dataset's sample count or the files' digests")
    return manifest


def load(folder: str) -> SelectedSubset:
    """The selection in ``folder`` (written by ``datadiet select``), every file checked."""
    manifest = read_manifest(folder)
    table, npz = _read(folder, SUBSET), _read(folder, SCORES)
    for name, data in ((SUBSET, table), (SCORES, npz)):
        if sha256(data) != manifest["files"][name]:
            raise _refuse(folder, name, "does not match the digest in manifest.json (changed after it was written)")
    indices, ids, labels, weights = _parse_rows(folder, table, manifest["dataset"]["samples"])
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as arrays:
            scores = {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError) as exc:
        raise _refuse(folder, SCORES, f"is not a numpy .npz of plain arrays ({exc})") from None
    return SelectedSubset(folder, torch.tensor(indices, dtype=torch.int64), torch.tensor(weights, dtype=torch.float32),
                          torch.tensor(labels, dtype=torch.int64), ids, manifest, scores)


def _parse_rows(folder: str, table: bytes, samples: int):
    try:
        rows = list(csv.reader(io.StringIO(table.decode("utf-8", "surrogateescape"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _refuse(folder, SUBSET, f"is not UTF-8 CSV ({exc})") from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise _refuse(folder, SUBSET, f"must start with the header {','.join(COLUMNS)}")
    indices, ids, labels, weights = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(COLUMNS):
                raise ValueError(f"{len(row)} fields")
            i, label, w = int(row[0]), int(row[2]), float(row[3])
        except ValueError as exc:
            raise _refuse(folder, SUBSET, f"line {line}: not index,id,label,weight ({exc})") from None
        if not 0 <= i < samples:
            raise _refuse(folder, SUBSET, f"line {line}: index {i} outside the dataset's {samples} samples")
        if not (math.isfinite(w) and w >= 0):
            raise _refuse(folder, SUBSET, f"line {line}: weight {row[3]!r} must be a finite number >= 0")
        indices.append(i), ids.append(row[1]), labels.append(label), weights.append(w)
    if len(set(indices)) != len(indices):
        raise _refuse(folder, SUBSET, "lists a sample twice")
    return indices, ids, labels, weights
