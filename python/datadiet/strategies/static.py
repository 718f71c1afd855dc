"""Score-based and random subsets: ``full``, ``random`` / ``random_online``, the ``ce_scores``
family (``loss``, ``el2n``, ``grand``, ``least_confidence``, ``margin``, ``entropy``) and
``forgetting``. Each is one-shot (``every=None``) or re-selected every R epochs (``Periodic``).

Keeping: ``keep="hard"`` the highest difficulty (DeepCore's default), ``"easy"`` the lowest,
``"middle"`` the band centred on the median; ``per_class=True`` gives each class
``ceil(k · n_c / n)`` (at most ``n_c``) of the budget, ``False`` one global ranking.
Difficulty is oriented so that larger is harder for every score (low confidence, small margin).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample
from datadiet.scores.forgetting import ForgettingCounter
from datadiet.scores.scoring import GRAD_SCOPES
from datadiet.select._budget import class_budgets
from datadiet.select.selection import Selection
from datadiet.strategies.base import Periodic, Strategy

KEEP = ("hard", "easy", "middle")
SOURCES = ("pass", "training")
SCORES = ("loss", "el2n", "grand", "least_confidence", "margin", "entropy")  # names ``difficulty`` knows


@dataclass
class Full(Strategy):
    """Every sample, every epoch: the baseline. ``budget = f`` (in (0, 1]) is "full data, trained
    less": all the data for f · epochs epochs, rounded half up (at least one), the lr schedule over
    those epochs — the optimisation steps a fraction-f subset takes in ``epochs`` epochs, the
    honest baseline a selection strategy at fraction f must beat. The Trainer trains
    ``Driver.epochs`` epochs; a loop of one's own reads ``driver.epochs`` for the same."""

    name = "full"
    budget: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.need(0.0 < self.budget <= 1.0, "budget", "in (0, 1] (the share of the run's epochs trained)")

    def epochs_to_train(self, epochs: int) -> int:
        # f · epochs rounded half up, in exact decimal arithmetic (0.29 · 50 is 14.5, so 15)
        return max(1, math.floor(Fraction(str(self.budget)) * epochs + Fraction(1, 2)))

    def describe(self) -> str:
        # without a budget, as before the parameter existed: such runs' checkpoints still resume
        return super().describe() if self.budget != 1.0 else f"{type(self).__module__}.{type(self).__qualname__}"


@dataclass
class FixedSubset(Strategy):
    """A given subset (pool indices, optional weights) from the first epoch on: the building block
    of pipelines that choose subsets themselves (the difficulty-ensembles study's base and member stages)."""

    name = "fixed"
    indices: torch.Tensor = None
    weights: Optional[torch.Tensor] = None

    def setup(self, context) -> None:
        super().setup(context)
        self.selection = Selection(self.indices, self.weights).validate(context.n)

    def planned_size(self, epoch: int) -> int:
        return len(self.selection)

    def select(self, epoch: int) -> Optional[Selection]:
        return self.selection if epoch == 0 else None


@dataclass
class Random(Periodic):
    """A uniform random subset drawn with its own seeded generator (``every=None``: fixed)."""

    name = "random"

    def choose(self, epoch: int) -> Selection:
        ones = torch.ones(self.context.n)
        picks = weighted_sample(ones, self.budget, seed=derive_seed(self.context.seed, 1, self.round(epoch)))
        self._last = {"round": self.round(epoch), "size": self.budget}
        return Selection(picks)


@dataclass
class RandomOnline(Random):
    """A fresh uniform random subset every ``every`` epochs."""

    name = "random_online"
    every: Optional[int] = 1


@dataclass
class RandomPB(Periodic):
    """The Cached-GradMatch study's RandomPB: the pool cut into fixed consecutive batches of ``batch_size`` (default
    the run's; the last one may be ragged) and whole batches taken in a seeded random order until
    they hold the budget (``ceil(budget / batch_size)`` batches, one more when the ragged one is
    among them), re-drawn every ``every`` epochs (CORDS' default 20) — the random twin of
    ``gradmatch`` with ``mode="per_batch"``."""

    name = "random_pb"
    every: Optional[int] = 20
    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"random_pb: batch_size must be an int >= 1, got {self.batch_size!r}")

    def setup(self, context) -> None:
        super().setup(context)
        if self.batch_size is None:
            self.batch_size = context.batch_size
        self.batches = math.ceil(context.n / self.batch_size)
        self.size = min(context.n, math.ceil(self.budget / self.batch_size) * self.batch_size)

    def choose(self, epoch: int) -> Selection:
        n, size = self.context.n, self.batch_size
        order = weighted_sample(torch.ones(self.batches), self.batches,
                                seed=derive_seed(self.context.seed, 9, self.round(epoch))).tolist()
        held = itertools.accumulate(min(n, (b + 1) * size) - b * size for b in order)
        taken = next(i + 1 for i, total in enumerate(held) if total >= self.budget)
        chosen = sorted(order[:taken])
        picks = torch.cat([torch.arange(b * size, min(n, (b + 1) * size)) for b in chosen])
        self._last = {"round": self.round(epoch), "size": int(picks.numel()), "batches": taken}
        return Selection(picks)


def rank_select(difficulty: torch.Tensor, budget: int, keep: str, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """Indices of ``budget`` samples by difficulty (see the module docstring); NaN counts as the
    hardest. ``labels`` None: one global ranking."""
    n = difficulty.numel()
    if labels is None:
        groups, counts, offsets = None, [n], [0, n]
    else:
        counts = torch.bincount(labels.long().cpu()).tolist()
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)
        groups = labels.long().to(difficulty.device)
    ks = class_budgets(counts, budget) if groups is not None else [budget]
    # Each group hardest first (NaN first too): a per-group full ordering from the radix select.
    ordered = topk_select(torch.nan_to_num(difficulty.float(), nan=float("inf")), counts, largest=True,
                          groups=groups) if groups is not None else \
        topk_select(torch.nan_to_num(difficulty.float(), nan=float("inf")), n, largest=True)
    picks = []
    for g, (c, k) in enumerate(zip(counts, ks)):
        block = ordered[offsets[g]:offsets[g] + c]
        start = {"hard": 0, "easy": c - k, "middle": (c - k) // 2}[keep]
        picks.append(block[start:start + k])
    return torch.cat(picks).cpu()


def difficulty(table, score: str) -> torch.Tensor:
    """Larger = harder for every score name."""
    if score == "grand":
        return table.grad_norm
    if score == "least_confidence":
        return 1.0 - table.confidence
    if score == "margin":
        return -table.margin
    return getattr(table, score)


@dataclass
class ScoreBased(Periodic):
    """Keeps samples by a ``ce_scores`` difficulty of the current model (one scoring pass), or, with
    ``pretrain_epochs`` / ``repeats``, the mean over ``repeats`` fresh models each trained
    ``pretrain_epochs`` epochs on the full pool (DeepCore's separate selection run; GraNd/EL2N's
    average over initialisations). One-shot from a scoring pass defaults to a proxy trained
    ``ceil(0.2 · epochs)`` epochs (DeepCore's 40 of 200), since scores of an untrained model say
    little; ``pretrain_epochs=0`` scores the run's own model at the selection epoch.
    ``source="training"`` (``loss`` only) ranks by each sample's last training loss instead: no
    extra pass, selection every ``every`` epochs (default 1) once every sample has a loss — the
    per-epoch regime. ``pool = P`` scores a seeded random ``ceil(P · budget)`` candidates per round
    instead of the whole pool (``Periodic.candidates``) and keeps the budget among them."""

    name = "score"
    score: str = "loss"
    keep: str = "hard"
    per_class: bool = True
    pretrain_epochs: Optional[int] = None
    repeats: int = 1
    source: str = "pass"
    pool: Optional[float] = None
    _table: Optional[torch.Tensor] = field(default=None, init=False, repr=False)

    @property
    def needs_head(self) -> bool:
        return self.score == "grand"

    @property
    def observes(self) -> bool:
        return self.source == "training"

    def __post_init__(self) -> None:
        super().__post_init__()
        label = type(self).name
        if self.keep not in KEEP:
            raise ValueError(f"{label}: keep must be one of {KEEP}, got {self.keep!r}")
        if self.source not in SOURCES:
            raise ValueError(f"{label}: source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "training" and self.score != "loss":
            raise ValueError(f"{label}: source='training' records training losses; it needs score='loss', got "
                             f"{self.score!r}")
        self.check_pool(self.pool)
        for key, least in (("pretrain_epochs", 0), ("repeats", 1)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise ValueError(f"{label}: {key} must be an int >= {least}, got {value!r}")
        # a one-shot pass without warm defaults to proxies (setup): known here, before any training
        proxies = bool(self.pretrain_epochs) or self.repeats > 1 or (
            self.every is None and self.pretrain_epochs is None and not self.warm)
        if self.pool is not None and (proxies or self.source == "training"):
            raise ValueError(f"{label}: pool = {self.pool} draws candidates for a scoring pass of the run's own model; "
                             "it needs source='pass' and pretrain_epochs=0, repeats=1 (a one-shot selection scores "
                             "proxies unless pretrain_epochs=0)")

    def setup(self, context) -> None:
        super().setup(context)
        label = type(self).name
        if self.pretrain_epochs is None:
            one_shot = self.every is None and self.source == "pass"
            self.pretrain_epochs = math.ceil(0.2 * context.epochs) if one_shot and not self.warm_epochs else 0
        if (self.pretrain_epochs or self.repeats > 1) and (self.every is not None or self.source == "training"):
            raise ValueError(f"{label}: pretrain_epochs / repeats score separately trained models once; they need "
                             "every=None (one-shot) and source='pass'")
        if (self.pretrain_epochs or self.repeats > 1) and context.proxy_scores is None:
            raise ValueError(f"{label}: one-shot scores come from proxy models (pretrain_epochs = "
                             f"{self.pretrain_epochs}, repeats = {self.repeats}; one-shot defaults to ceil(0.2 · "
                             "epochs)), and this loop gives no proxy_scores: pass pretrain_epochs=0 (score the run's "
                             "own model; warm= trains it on the full pool first) or a proxy_scores callable")
        if self.source == "training":
            if self.every is None:
                self.every = 1
            self.warm_epochs = max(self.warm_epochs, 1)  # epoch 0 trains on everything to fill the table
            if self.warm_epochs >= context.epochs:
                raise ValueError(f"{label}: source='training' fills its loss table on a full-data epoch first; "
                                 f"{context.epochs} epoch(s) leave none to select for")
            self._table = torch.full((context.n,), float("nan"), device=context.device)
        if self.per_class:
            self.size = self.per_class_size()

    def observe(self, indices, losses, correct) -> None:
        self._table[indices.to(self._table.device)] = losses.float().to(self._table.device)

    def selects_at(self, epoch: int) -> bool:
        if self.source == "training" and bool(torch.isnan(self._table).any()):
            return False  # not every sample has a training loss yet: keep training on the full pool
        return super().selects_at(epoch)

    def scores(self, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Difficulty of every sample of the pool, or of the samples ``rows`` alone (a candidate pool)."""
        if self.source == "training":
            return self._table.clone()
        ctx = self.context
        if self.pretrain_epochs or self.repeats > 1:
            tables = [difficulty(ctx.proxy_scores(self.pretrain_epochs, init, **self.scoring()), self.score)
                      for init in range(self.repeats)]
            return torch.stack(tables).mean(0)
        return difficulty(ctx.score(**self.scoring(), **self.among(rows)), self.score)

    def scoring(self) -> dict:
        """Options of the scoring pass (``score_dataset``) this strategy needs."""
        return {}

    def choose(self, epoch: int) -> Selection:
        rows = self.candidates(self.pool, epoch, per_class=self.per_class)
        d = self.scores(rows)
        labels = self.context.labels if rows is None else self.context.labels[rows]
        picks = rank_select(d, self.budget, self.keep, labels if self.per_class else None)
        self._last = {"size": int(picks.numel()), "score_mean": float(torch.nanmean(d.float()))}
        return Selection(self.from_candidates(picks, rows))

    def state_dict(self) -> dict:
        return {"table": None if self._table is None else self._table.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("table") is not None:
            self._table.copy_(state["table"])


@dataclass
class Loss(ScoreBased):
    """Keeps by per-sample cross-entropy loss."""

    name = "loss"
    score: str = field(default="loss", init=False)


@dataclass
class EL2N(ScoreBased):
    """Keeps by EL2N, ‖softmax − onehot‖ (Paul et al. 2021)."""

    name = "el2n"
    score: str = field(default="el2n", init=False)


@dataclass
class GraNd(ScoreBased):
    """Keeps by GraNd, the norm of each sample's loss gradient: ``scope="last_layer"`` (default) the
    exact norm of ∂ℓ/∂(W, b) of the final Linear (DeepCore's GraNd, without its 1/batch scaling);
    ``scope="full"`` the exact norm over every trainable parameter, as the paper defines it
    (``datadiet.scores.grad_norms``: one more forward and backward per scored batch). With
    ``repeats`` the mean over that many initialisations, each trained ``pretrain_epochs``."""

    name = "grand"
    score: str = field(default="grand", init=False)
    scope: str = "last_layer"

    @property
    def needs_head(self) -> bool:
        return self.scope == "last_layer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in GRAD_SCOPES:
            raise ValueError(f"grand: scope must be one of {GRAD_SCOPES}, got {self.scope!r}")

    def scoring(self) -> dict:
        # Nothing for the default, so a user loop's proxy_scores(epochs, init) keeps working.
        return {"grad_scope": "full"} if self.scope == "full" else {}


@dataclass
class LeastConfidence(ScoreBased):
    """Keeps by 1 − max softmax (DeepCore's uncertainty)."""

    name = "least_confidence"
    score: str = field(default="least_confidence", init=False)


@dataclass
class Margin(ScoreBased):
    """Keeps by the top-2 softmax margin (small = hard)."""

    name = "margin"
    score: str = field(default="margin", init=False)


@dataclass
class Entropy(ScoreBased):
    """Keeps by softmax entropy."""

    name = "entropy"
    score: str = field(default="entropy", init=False)


@dataclass
class Forgetting(Periodic):
    """Keeps by forgetting events (Toneva et al.) counted on the training forward passes of the run
    itself: the first ``count_epochs`` epochs (at least 2, so every sample is presented twice;
    more when CORDS' ``warm`` asks for more) train on the full pool, then the subset is chosen, and
    with ``every`` re-chosen from the counts gathered on the subsets since."""

    name = "forgetting"
    observes = True
    observes_correct = True
    keep: str = "hard"
    per_class: bool = True
    count_epochs: int = 2
    _counter: Optional[ForgettingCounter] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep not in KEEP:
            raise ValueError(f"forgetting: keep must be one of {KEEP}, got {self.keep!r}")
        if self.count_epochs < 2:
            raise ValueError(f"forgetting: count_epochs must be an int >= 2 (a forgetting event needs two "
                             f"presentations), got {self.count_epochs!r}")

    def setup(self, context) -> None:
        super().setup(context)
        self.warm_epochs = max(self.warm_epochs, self.count_epochs)
        if self.warm_epochs >= context.epochs:
            raise ValueError(f"forgetting: {self.warm_epochs} counting epochs leave none of the {context.epochs} to "
                             "train on the subset")
        if self.per_class:
            self.size = self.per_class_size()
        self._counter = ForgettingCounter(context.n, context.device)

    def observe(self, indices, losses, correct) -> None:
        self._counter.update(indices, correct)

    def choose(self, epoch: int) -> Selection:
        d = self._counter.scores()
        picks = rank_select(d, self.budget, self.keep, self.context.labels if self.per_class else None)
        self._last = {"size": int(picks.numel()), "forgetting_mean": float(d.float().mean())}
        return Selection(picks)

    def state_dict(self) -> dict:
        return {"counter": self._counter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._counter.load_state_dict(state["counter"])
