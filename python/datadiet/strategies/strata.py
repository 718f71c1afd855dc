"""``strata``: one difficulty stratum, the unit the ensembles on difficulty subsets train their
members on, as a subset of its own.

The pool is ordered by a difficulty score (GraNd by default, larger = harder, NaN hardest) and
cut into ``strata`` contiguous strata of near-equal size, stratum 0 the easiest (the sizes of
``numpy.array_split``: the first ``n mod K`` strata hold one sample more). The subset is
``fraction · n`` samples drawn uniformly without replacement from stratum ``stratum``; the
budget must fit in it (at most ``1 / K`` of the pool, rounded as the stratum's size is).

``per_class=True`` stratifies each class on its own (class c's stratum J holds its samples of
that difficulty rank) and draws class c's share ``ceil(k · n_c / n)`` of the budget from it, so
the subset keeps the class balance; ``False`` (default, as the ensembles do) ranks the pool as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.ops.stratified_select import stratified_select
from datadiet.select._budget import class_budgets
from datadiet.select.selection import Selection
from datadiet.strategies.static import SCORES, ScoreBased


def stratum_size(n: int, strata: int, stratum: int) -> int:
    """Samples in stratum ``stratum`` of ``n`` cut into ``strata`` (``numpy.array_split``'s sizes)."""
    return n // strata + (1 if stratum < n % strata else 0)


@dataclass
class Strata(ScoreBased):
    """Stratum ``stratum`` (0 = easiest) of ``strata`` difficulty strata by ``score``; module docstring."""

    name = "strata"
    score: str = "grand"
    strata: int = 3
    stratum: Optional[int] = None
    per_class: bool = False
    keep: str = field(default="hard", init=False)  # the stratum chooses the difficulty
    source: str = field(default="pass", init=False)
    pool: Optional[float] = field(default=None, init=False)  # strata are of the whole pool's ranking

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"strata: score must be one of {SCORES}, got {self.score!r}")
        super().__post_init__()
        if isinstance(self.strata, bool) or not isinstance(self.strata, int) or self.strata < 1:
            raise ValueError(f"strata: strata must be an int >= 1 (how many difficulty strata), got {self.strata!r}")
        if self.stratum is None:
            raise ValueError(f"strata: stratum = None: give the stratum kept, 0 (easiest) to {self.strata - 1} "
                             "(hardest)")
        if isinstance(self.stratum, bool) or not isinstance(self.stratum, int) or not 0 <= self.stratum < self.strata:
            raise ValueError(f"strata: stratum must be an int in [0, {self.strata - 1}] (0 = easiest of "
                             f"strata = {self.strata}), got {self.stratum!r}")

    def setup(self, context) -> None:
        super().setup(context)
        if self.strata > context.n:
            raise ValueError(f"strata: strata = {self.strata} is more than the pool's {context.n} samples")
        counts = self._counts()
        small = [c for c, count in enumerate(counts) if 0 < count < self.strata] if self.per_class else []
        if small:
            raise ValueError(f"strata: per_class = True cuts every class into strata = {self.strata}, and class "
                             f"{small[0]} holds {counts[small[0]]} samples: use fewer strata or per_class = False")
        budgets = class_budgets(counts, self.budget) if self.per_class else [self.budget]
        for c, (count, k) in enumerate(zip(counts, budgets)):
            room = stratum_size(count, self.strata, self.stratum)
            if k > room:
                where = f"class {c}'s stratum" if self.per_class else "the stratum"
                raise ValueError(f"strata: fraction = {self.fraction} asks {k} samples of {where} {self.stratum}, "
                                 f"which holds {room} (1/{self.strata} of {count}): use a fraction of at most "
                                 f"{self._most():g}, or fewer strata")
        self.size = sum(budgets)

    @property
    def needs_head(self) -> bool:
        return self.score == "grand"

    def _counts(self) -> list[int]:
        if not self.per_class:
            return [self.context.n]
        return torch.bincount(self.context.labels, minlength=self.context.num_classes).tolist()

    def _most(self) -> float:
        """The largest fraction whose budget every stratum ``stratum`` holds (the refusal's hint)."""
        # ceil(k · n_c / n) <= s_c  <=>  k <= s_c · n / n_c, for every class with samples; printed
        # rounded down, so the fraction the message names is one the check accepts
        n = self.context.n
        most = min((stratum_size(c, self.strata, self.stratum) * n) // c for c in self._counts() if c)
        return math.floor(most / n * 1e4) / 1e4

    def choose(self, epoch: int) -> Selection:
        d, ctx = self.scores().float().cpu(), self.context
        seed = derive_seed(ctx.seed, 41, self.round(epoch))
        if not self.per_class:
            picks = stratified_select(d, self.strata, 1.0, seed=seed)[self.stratum][:self.budget]
        else:
            counts = self._counts()
            by_class = torch.split(torch.sort(ctx.labels.cpu(), stable=True).indices, counts)  # O(n log n)
            parts = []
            for c, k in enumerate(class_budgets(counts, self.budget)):
                members = by_class[c]
                if k:
                    drawn = stratified_select(d[members], self.strata, 1.0, seed=derive_seed(seed, c))[self.stratum]
                    parts.append(members[drawn[:k]])
            picks = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        picks = torch.sort(picks).values
        chosen = d[picks]
        chosen = chosen[~torch.isnan(chosen)]  # NaN counts as hardest; the range is of the numbers
        self._last = {"size": int(picks.numel()), "score_mean": float(torch.nanmean(d)),
                      "stratum_score_min": float(chosen.min()) if chosen.numel() else None,
                      "stratum_score_max": float(chosen.max()) if chosen.numel() else None}
        return Selection(picks)
