"""The reference training loop's building blocks (data plumbing first; the trainer builds on it)."""

from datadiet.train.data import IndexedDataset, Selection, SelectionSampler

__all__ = ["IndexedDataset", "Selection", "SelectionSampler"]
