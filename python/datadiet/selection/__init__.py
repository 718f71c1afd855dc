"""Selection as a job: score and select a dataset once, write the subset, train on it anywhere.

- ``select_dataset(config, weights=..., proxy_epochs=...)`` (``datadiet select``): runs a one-shot
  strategy on a trained or proxy model and writes ``subset.csv``, ``scores.npz`` and
  ``manifest.json`` to ``config.out`` (``job``);
- ``load(folder)``: the subset, checked: indices, weights, labels, ids, scores, and a ``Subset`` /
  ``Sampler`` for any loop (``files``); ``datadiet train --subset DIR`` trains it.
"""

from datadiet.selection.files import SelectedSubset, load
from datadiet.selection.job import STRATEGIES, select_dataset

__all__ = ["STRATEGIES", "SelectedSubset", "load", "select_dataset"]
