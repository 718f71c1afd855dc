"""The one strategy interface every selection method implements, and the four regimes.

A training loop drives a strategy through five calls; it never asks what the strategy is:

- ``setup(context)`` once, with the run's facts and the scoring hooks (``Context``);
- ``select(epoch)`` at each epoch start: a new ``Selection`` (indices and weights the epoch
  trains on) or None to keep the current one;
- ``observe(indices, losses, correct)`` after each training forward pass, when the strategy
  sets ``observes`` (per-sample losses and correctness from training, no extra pass);
- ``batch_mask(progress, batch_losses)`` before each backward pass: None (train on the whole
  batch) or a bool keep mask; ``batch_losses(scale)`` runs the eval-mode, no-grad selection
  forward pass only when called (``batch_losses(scale, details=True)``: the losses, the output
  gradient norms ‖p − y‖ and whether each sample is classified correctly);
- ``state_dict()`` / ``load_state_dict()``: everything a resumed run needs.

The regimes are compositions of these calls:

1. one-shot: ``Periodic`` with ``every=None`` selects once (after ``warm`` epochs), optionally
   from separately trained proxy models (``Context.proxy_scores``);
2. every R epochs: ``Periodic`` with ``every=R``, CORDS' warm start (``warm`` = kappa: the
   first ``ceil(kappa · epochs · fraction)`` epochs train on full data);
3. per epoch from training losses: ``observes = True`` and ``select`` every epoch from the
   table ``observe`` filled;
4. per batch: ``batch_mask``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.ops.weighted_sample import weighted_sample
from datadiet.scores.scoring import ScoreTable
from datadiet.select._budget import class_budgets, fraction_budget
from datadiet.select.selection import Selection


@dataclass
class Context:
    """What the loop tells a strategy. ``score(split=..., features=, errors=, logits=)`` scores the
    current model over the training pool (``split="train"``) or the held-out selection split
    (``"val"``); ``proxy_scores(epochs, init, **wanted)`` trains a fresh model from initialisation
    ``init`` for ``epochs`` epochs on the full pool and scores the pool with it. ``run`` describes
    the run (the ``Trainer``'s configuration) for files a strategy writes."""

    n: int
    labels: torch.Tensor
    num_classes: int
    epochs: int
    seed: int
    batch_size: int
    lr: float
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    score: Callable[..., ScoreTable] = None
    proxy_scores: Callable[..., ScoreTable] = None
    has_val: bool = False
    run: dict = field(default_factory=dict)  # the run's configuration, for files a strategy writes


# What a value of each checked type hint must be, in the words of an error message.
_KINDS = {int: "an int", float: "a finite number", bool: "true or false", str: "a string", dict: "a table",
          tuple: "a list", list: "a list"}


def is_number(value: Any) -> bool:
    """An int or a finite float; not a bool, nor an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _fits(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return is_number(value)
    if kind in (tuple, list):  # a list from TOML or JSON stands for a tuple
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


def expected(value: Any, hint: Any) -> Optional[str]:
    """None when ``value`` fits the type hint ``hint``, else what it must be ("an int or None").
    Hints checked: int (not bool), float (an int or a finite float), bool, str, dict, tuple, list
    and Optional of one of them; any other hint (Any, a tensor) is left to its owner's checks."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if optional else [hint]
    if len(kinds) != 1 or kinds[0] not in _KINDS or (optional and value is None) or _fits(value, kinds[0]):
        return None
    return _KINDS[kinds[0]] + (" or None" if optional else "")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_types(obj: Any, prefix: str) -> None:
    """Each constructor field of the dataclass ``obj`` against its type hint: for the first that does
    not fit, a ValueError ``{prefix}KEY = VALUE: must be ...``. Range checks come after it, so
    they can compare numbers without a TypeError."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        what = expected(getattr(obj, f.name), hints[f.name]) if f.init else None
        if what:
            raise ValueError(f"{prefix}{f.name} = {getattr(obj, f.name)!r}: must be {what}")


class Strategy:
    """Base: trains on the full pool, never filters a batch. Subclasses override what they need.
    A dataclass strategy checks its parameters when constructed (``__post_init__``: types here,
    ranges in the subclass), so a bad option fails before any model trains; ``setup`` checks only
    what needs the run (its epochs, pool, held-out split)."""

    name = "full"
    observes = False  # observe() wants each training forward's per-sample losses ...
    observes_correct = False  # ... and whether each sample was classified correctly
    needs_head = False
    rescales_loss = False  # the loss is Σ w ℓ / n (weights rescale gradients), not Σ w ℓ / Σ w

    def __post_init__(self) -> None:
        check_types(self, f"strategy {self.name!r}: ")

    def need(self, ok: bool, key: str, what: str) -> None:
        """A ValueError naming the strategy, the parameter ``key``, its value and ``what`` it must be."""
        if not ok:
            raise ValueError(f"strategy {self.name!r}: {key} = {getattr(self, key)!r}: must be {what}")

    def setup(self, context: Context) -> None:
        self.context = context

    def solves_here(self) -> bool:
        """Whether this process runs the selection's solver: under DDP rank 0 alone, after every
        rank joined the scoring passes (their collectives); the Driver hands rank 0's selection to
        the others, whose ``select`` returns ``elsewhere()``."""
        return self.context.world_size == 1 or self.context.rank == 0

    @staticmethod
    def elsewhere() -> Selection:
        """What a rank that does not solve returns: a stand-in the Driver replaces by rank 0's."""
        return Selection(torch.zeros(0, dtype=torch.int64))

    def epochs_to_train(self, epochs: int) -> int:
        """How many of the run's ``epochs`` the loop trains (all but for an equal-budget baseline,
        ``full`` with ``budget``)."""
        return epochs

    def planned_size(self, epoch: int) -> int:
        """How many samples epoch ``epoch`` is expected to train on (sizes the lr schedule)."""
        return self.context.n

    def select(self, epoch: int) -> Optional[Selection]:
        return Selection.full(self.context.n) if epoch == 0 else None

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, correct: torch.Tensor) -> None:
        pass

    def batch_mask(self, progress: float, batch_losses: Callable[[float], torch.Tensor]) -> Optional[torch.Tensor]:
        return None

    @property
    def filters_batches(self) -> bool:
        """Whether ``batch_mask`` can drop samples (the loop then weighs every batch)."""
        return type(self).batch_mask is not Strategy.batch_mask

    def describe(self) -> str:
        """The class and its constructor parameters: what a checkpoint must match to resume the run
        (no object addresses)."""
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        if not dataclasses.is_dataclass(self):
            return name
        return f"{name}(" + ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                                      if f.init) + ")"

    def reselects_every(self) -> Optional[int]:
        """The epochs between this strategy's scheduled re-selections, which the loop may stretch
        (``stretch``) when a round costs more than its share of the training time; None when it
        selects once, or on terms a stretch would break (a replayed or recorded schedule)."""
        return None

    def stretch(self, interval: int, since: int) -> bool:
        """Re-select once ``interval`` (>= ``reselects_every()``) epochs have passed since the
        selection at epoch ``since``, instead of on the strategy's own schedule; False (nothing
        changed) when that selection was not one of the strategy's rounds (a warm start's)."""
        raise TypeError(f"strategy {self.name!r} re-selects on no schedule that could be stretched")

    def report(self) -> dict[str, Any]:
        """Facts about the last selection for the run's metrics (sizes, solver residuals, ...)."""
        return {}

    def log(self) -> dict[str, Any]:
        """What the strategy learned so far, logged with every epoch's metrics (AdaSelection's
        method weights); empty for most."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def check_strategy(owner: str, strategy: Any) -> Strategy:
    """``strategy`` if it is a ``Strategy`` object, else a TypeError naming ``owner`` and the fix."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"{owner}: strategy must be a datadiet.strategies.Strategy, got {type(strategy).__name__} "
                        "(make one with datadiet.strategies.make(name, ...))")
    return strategy


@dataclass
class Periodic(Strategy):
    """Selects ``fraction`` of the pool at epoch ``warm_epochs`` and, with ``every = R``, again at
    every R-th epoch after it; the warm epochs train on the full pool. ``choose(epoch)``
    (subclasses) returns the selection."""

    fraction: float = 0.1
    every: Optional[int] = None
    warm: float = 0.0
    _last: dict = field(default_factory=dict, init=False, repr=False)
    _stretched: Optional[tuple] = field(default=None, init=False, repr=False)  # (interval, since), the loop's

    def __post_init__(self) -> None:
        super().__post_init__()
        label = type(self).name
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"{label}: fraction must be in (0, 1], got {self.fraction!r}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"{label}: every must be an int >= 1 (epochs between selections) or None (one-shot), "
                             f"got {self.every!r}")
        if not 0.0 <= self.warm < 1.0:
            raise ValueError(f"{label}: warm must be in [0, 1) (CORDS' kappa), got {self.warm!r}")

    def setup(self, context: Context) -> None:
        super().setup(context)
        label = type(self).name
        self.fraction = float(self.fraction)
        self.warm_epochs = math.ceil(self.warm * context.epochs * self.fraction) if self.warm else 0
        if self.warm_epochs >= context.epochs:
            raise ValueError(f"{label}: warm = {self.warm} gives {self.warm_epochs} full-data epochs of "
                             f"{context.epochs}, leaving none to select for")
        self.budget = fraction_budget(self.fraction, context.n)
        self.size = self.budget  # what a selection holds; per-class strategies round up per class

    def check_pool(self, pool: Optional[float]) -> None:
        """``pool`` (a strategy's parameter of that name) is None or a number >= 1."""
        if pool is not None and not (is_number(pool) and pool >= 1):
            raise ValueError(f"{type(self).name}: pool = {pool!r}: must be a number >= 1 (candidates scored per round, "
                             "as a multiple of the budget) or None (the whole pool)")

    def candidates(self, pool: Optional[float], epoch: int, per_class: bool = False) -> Optional[torch.Tensor]:
        """The round's candidate pool for ``pool = P``: ``ceil(P · budget)`` samples drawn uniformly
        without replacement with the round's own seed (so every rank draws the same), ascending;
        ``per_class``: ``ceil(P · k_c)`` of each class c (at most all of it), k_c its share of the
        budget, so every class keeps candidates for its own problem. A round then scores and
        solves over them alone, its cost ∝ P · budget instead of the pool's size. None when
        ``pool`` is None or covers the whole pool."""
        ctx = self.context
        if pool is None or math.ceil(pool * self.budget) >= ctx.n:
            return None
        seed = derive_seed(ctx.seed, 12, self.round(epoch))
        if not per_class:
            drawn = weighted_sample(torch.ones(ctx.n), math.ceil(pool * self.budget), seed=seed).cpu()
            return torch.sort(drawn).values
        counts = torch.bincount(ctx.labels, minlength=ctx.num_classes).tolist()
        members = torch.split(torch.argsort(ctx.labels, stable=True), counts)  # each class's samples, ascending
        parts = []
        for c, (group, k) in enumerate(zip(members, class_budgets(counts, self.budget))):
            m = min(len(group), math.ceil(pool * k))
            if m == len(group):
                parts.append(group)
            elif m > 0:
                parts.append(group[weighted_sample(torch.ones(len(group)), m, seed=derive_seed(seed, c)).cpu()])
        return torch.sort(torch.cat(parts)).values

    @staticmethod
    def among(rows: Optional[torch.Tensor]) -> dict:
        """The scoring pass's option for the candidates ``rows`` (none: the whole pool)."""
        return {} if rows is None else {"rows": rows.tolist()}

    def from_candidates(self, picks: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
        """Picks made among the candidates ``rows`` as pool indices (the candidates' count in the
        round's report); the picks themselves when the round scored the whole pool."""
        if rows is None:
            return picks
        self._last["candidates"] = int(rows.numel())
        return rows[picks]

    def per_class_size(self) -> int:
        return sum(class_budgets(torch.bincount(self.context.labels, minlength=self.context.num_classes).tolist(),
                                 self.budget))

    def selects_at(self, epoch: int) -> bool:
        start = self.warm_epochs
        if self._stretched is not None:  # the loop's guard holds the schedule: interval epochs after the last
            interval, since = self._stretched
            return epoch - since >= interval
        return epoch == start or (self.every is not None and epoch > start and (epoch - start) % self.every == 0)

    def reselects_every(self) -> Optional[int]:
        return self.every

    def stretch(self, interval: int, since: int) -> bool:
        if since < self.warm_epochs:
            return False  # a warm start's full pool, not a round of this strategy
        if self.every is None or interval < self.every:
            raise ValueError(f"{type(self).name}: a stretched interval must be >= every = {self.every} epochs after a "
                             f"selection, got {interval} after epoch {since}")
        self._stretched = (int(interval), int(since))
        return True

    def planned_size(self, epoch: int) -> int:
        return self.context.n if epoch < self.warm_epochs else self.size

    def select(self, epoch: int) -> Optional[Selection]:
        if epoch < self.warm_epochs:
            return Selection.full(self.context.n) if epoch == 0 else None
        if not self.selects_at(epoch):
            return None
        return self.choose(epoch)

    def choose(self, epoch: int) -> Selection:
        raise NotImplementedError

    def round(self, epoch: int) -> int:
        """0 for the first selection, 1 for the next on the own schedule, ...: distinct and
        increasing over the selections (a stretched schedule skips numbers), so each round seeds
        its own draws."""
        return 0 if self.every is None else (epoch - self.warm_epochs) // self.every

    def report(self) -> dict[str, Any]:
        return dict(self._last)
