"""The reference training loop: ``Trainer`` (a whole run from a ``TrainConfig``), ``Driver`` (a
strategy driving any loop), and their building blocks — data plumbing (``data``), datasets and
models by name, step-based schedules, atomic checksummed checkpoints and the comparison."""

from datadiet.train.config import TrainConfig
from datadiet.train.data import IndexedDataset, Selection, SelectionSampler
from datadiet.train.driver import Driver
from datadiet.train.trainer import Trainer

__all__ = ["Driver", "IndexedDataset", "Selection", "SelectionSampler", "TrainConfig", "Trainer"]
