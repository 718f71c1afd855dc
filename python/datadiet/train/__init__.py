"""The reference training loop's building blocks: data plumbing (``data``) and checkpoints
(``checkpoint``); the trainer builds on them."""

from datadiet.train.data import IndexedDataset, Selection, SelectionSampler

__all__ = ["IndexedDataset", "Selection", "SelectionSampler"]
