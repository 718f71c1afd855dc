"""``infobatch`` (Qin et al., ICLR 2024): per-epoch pruning
from the training losses alone.

Each sample's score is its latest training loss (``observe``: no extra pass). At every epoch start
the samples scoring below the mean are "well learned"; a seeded random fraction ``prune`` (r) of
them sits this epoch out, and the kept well-learned samples' losses are scaled by 1/(1 − r), so
the epoch's expected gradient sum is the full data's (``rescales_loss``: the loss is Σ w ℓ / n, not
a weighted mean). Every sample above the mean trains. The last ``anneal`` (δ) of the epochs train on
all the data with weight 1.

Where the public code falls short, this one does not: no monkey-patched loader (a ``Selection``
per epoch through the ordinary sampler); no pruning until every sample has a loss (its first
epoch prunes on scores that all start equal); the score table is in the checkpoint; under
torchrun every rank's losses reach the table (the loop gathers them) and rank 0's draw is used;
the learning-rate schedule follows optimisation steps, re-sized from each epoch's real size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.ops.weighted_sample import weighted_sample
from datadiet.select.selection import Selection
from datadiet.strategies.base import Strategy


@dataclass
class InfoBatch(Strategy):
    """Prunes ``prune`` of the below-mean-loss samples each epoch, rescales the rest of them by
    1/(1 − ``prune``), and trains on everything for the last ``anneal`` of the epochs."""

    name = "infobatch"
    observes = True
    rescales_loss = True
    prune: float = 0.5
    anneal: float = 0.125
    _scores: Optional[torch.Tensor] = field(default=None, init=False, repr=False)
    _last: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"infobatch: prune must be in [0, 1) (the fraction of well-learned samples left out), "
                             f"got {self.prune!r}")
        if not 0.0 <= self.anneal <= 1:
            raise ValueError(f"infobatch: anneal must be in [0, 1] (the last fraction of epochs on all data), got "
                             f"{self.anneal!r}")

    def setup(self, context) -> None:
        super().setup(context)
        self.stop = (1.0 - self.anneal) * context.epochs  # prunes in epochs e < stop
        self._scores = torch.full((context.n,), float("nan"), device=context.device)
        self._seen = torch.zeros(context.n, dtype=torch.bool, device=context.device)

    def prunes_in(self, epoch: int) -> bool:
        return epoch < self.stop

    def planned_size(self, epoch: int) -> int:
        """Expected size: about half the samples lie below the mean; the first epoch is whole."""
        n = self.context.n
        return n - math.floor(self.prune * n / 2) if epoch > 0 and self.prunes_in(epoch) else n

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, correct: torch.Tensor) -> None:
        indices = indices.to(self._scores.device)
        self._scores[indices] = losses.to(self._scores.device, torch.float32)
        self._seen[indices] = True

    def select(self, epoch: int) -> Optional[Selection]:
        scores, n = self._scores.cpu(), self.context.n
        finite = torch.isfinite(scores)
        if not self.prunes_in(epoch) or self.prune == 0.0 or not bool(self._seen.all()) or not bool(finite.any()):
            self._last = {"pruned": 0, "well_learned": 0, "reason": "annealing" if not self.prunes_in(epoch)
                          else "no pruning" if self.prune == 0.0 else "scores incomplete"}
            return Selection.full(n)
        mean = scores[finite].mean()  # a non-finite loss is no well-learned sample: it always trains
        well = (finite & (scores < mean)).nonzero().flatten()
        drop = math.floor(self.prune * well.numel())
        weights = torch.ones(n)
        weights[well] = 1.0 / (1.0 - self.prune)
        keep = torch.ones(n, dtype=torch.bool)
        if drop:
            out = weighted_sample(torch.ones(well.numel()), drop, seed=derive_seed(self.context.seed, 10, epoch))
            keep[well[out]] = False
        indices = keep.nonzero().flatten()
        self._last = {"pruned": drop, "well_learned": int(well.numel()), "threshold": float(mean)}
        return Selection(indices, weights[indices])

    def report(self) -> dict[str, Any]:
        return dict(self._last)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self._scores.cpu(), "seen": self._seen.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scores = state["scores"].to(self._scores.device)
        self._seen = state["seen"].to(self._seen.device)
