"""Adaptive subsets re-selected from the current model every R epochs: ``gradmatch`` and
``glister``, on last-layer gradients from one scoring
pass (the final ``nn.Linear``'s inputs captured by a hook, ``ce_scores``' p − onehot).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.select.glister import VARIANTS, Shard, glister, val_block_owner
from datadiet._dist import all_reduce_, gather_rows, route_rows, world
from datadiet.select._budget import class_budgets
from datadiet.backends import resolve
from datadiet.ops.omp import OMPResult, check_engine_budget
from datadiet.select.gradmatch import (EMBEDDINGS, MODES, ClassPicks, class_counts, class_picks, finish_classes,
                                       gradmatch, last_layer_embedding)
from datadiet.select.selection import Selection
from datadiet.strategies.base import Periodic
from datadiet.strategies.cached import SelectionRecorder

TARGETS = ("train", "val")


@dataclass
class GradMatch(Periodic):
    """GradMatch (Killamsetty et al. 2021) by OMP over last-layer gradients, every ``every`` epochs
    (CORDS' default 20), with CORDS' warm start (``warm`` = kappa) and the solver's weights.

    ``mode``: ``per_class`` (one problem per class), ``per_batch`` (whole fixed batches of
    ``batch_size``; CORDS' PB) or ``global``. ``embedding``: ``per_class`` (the label's bias entry
    and weight row; the default and CORDS' choice in per-class mode), ``full`` (the whole last
    layer, kept factorised; per_class and global modes) or ``bias`` (p − onehot only).

    Warning: the bias-only embedding throws the features away. On held-out real handwritten
    digits at 10%, one-shot, it lost to a random subset by 23 points while the per-class
    embedding beat random by 2.5; use it only to reproduce CORDS' bias-only runs.

    ``target="val"`` matches the held-out selection split's gradient instead of the training
    sum. ``lam`` defaults to CORDS' 0.5 (per class, global) and 0 (per batch).

    ``cache=PATH`` records every round to a selection cache that ``cached_gradmatch`` replays
    (the Cached-GradMatch study's Cached-GradMatch, ``strategies.cached``).

    ``pool = P`` scores and solves over a seeded random ``ceil(P · budget)`` candidates per round
    (``Periodic.candidates``) instead of the whole pool: the round's cost ∝ P · budget. Under DDP
    a pooled round's rows are gathered to rank 0, which solves (the pool is small).
    """

    name = "gradmatch"
    needs_head = True
    every: Optional[int] = 20
    mode: str = "per_class"
    embedding: Optional[str] = None
    target: str = "train"
    lam: Optional[float] = None
    batch_size: Optional[int] = None
    tol: float = 0.0
    cache: Optional[str] = None
    pool: Optional[float] = None
    _recorder: Optional[SelectionRecorder] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"gradmatch: mode must be one of {MODES}, got {self.mode!r}")
        if self.embedding is not None and self.embedding not in EMBEDDINGS:
            raise ValueError(f"gradmatch: embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.embedding == "per_class" and self.mode != "per_class":
            raise ValueError(f"gradmatch: embedding='per_class' (the label's row) needs mode='per_class', got "
                             f"mode={self.mode!r}")
        if self.embedding == "full" and self.mode == "per_batch":
            raise ValueError("gradmatch: mode='per_batch' needs a dense embedding ('bias'); the full last layer is "
                             "only kept factorised per sample")
        if self.target not in TARGETS:
            raise ValueError(f"gradmatch: target must be one of {TARGETS}, got {self.target!r}")
        self.need(self.lam is None or self.lam >= 0, "lam", ">= 0 (the ridge term) or None (CORDS' default)")
        self.need(0 <= self.tol < 1, "tol", "in [0, 1) (the residual at which OMP stops)")
        self.need(self.batch_size is None or self.batch_size >= 1, "batch_size", "an int >= 1 or None (the run's)")
        self.check_pool(self.pool)
        self.need(self.pool is None or self.mode != "per_batch", "pool", "None with mode='per_batch' (its "
                  "candidates are whole fixed batches: random_pb draws those)")

    def setup(self, context) -> None:
        super().setup(context)
        self._recorder = SelectionRecorder(self.cache, self) if self.cache else None
        if self.embedding is None:  # always a combination the checks at construction allow
            self.embedding = "per_class" if self.mode == "per_class" else "bias"
        if self.embedding == "bias":
            warnings.warn("gradmatch: the bias-only embedding ignores the features and can select worse than "
                          "random (see the GradMatch docstring)", stacklevel=2)
        if self.target == "val" and not context.has_val:
            raise ValueError("gradmatch: target='val' needs a held-out selection split (val_fraction > 0)")
        if self.lam is None:
            self.lam = 0.0 if self.mode == "per_batch" else 0.5
        if self.batch_size is None:
            self.batch_size = context.batch_size
        if self.mode == "per_batch":
            self.need(self.batch_size <= context.n, "batch_size", f"at most the pool's {context.n} samples")
        self._check_engine(context)

    def reselects_every(self) -> Optional[int]:
        # a recording's rounds must fall where cached_gradmatch replays them: never stretched
        return None if self.cache else self.every

    def _check_engine(self, context) -> None:
        """Refuses now (not at the first selection) a problem budget the device's OMP engine
        cannot serve: the largest class's under per_class, the one problem's otherwise."""
        if self.mode == "per_class":
            counts = torch.bincount(context.labels, minlength=context.num_classes).tolist()
            k, what = max(class_budgets(counts, self.budget)), "its largest class is one OMP problem"
        elif self.mode == "global":
            k, what = self.budget, "it is one OMP problem"
        else:
            k = min(-(-context.n // self.batch_size), max(1, self.budget // self.batch_size))
            what = "it is one OMP problem over whole batches"
        op = "omp_factored" if self.embedding == "full" else "omp"
        try:
            check_engine_budget(op, resolve("auto", context.device, op), [k])
        except ValueError as exc:
            raise ValueError(f"gradmatch: mode = {self.mode!r} at fraction {self.fraction}: {what} of {k} picks on "
                             f"{context.device.type}: {str(exc).split(': ', 1)[1]}") from None
        if self.mode == "per_class":
            self.size = self.per_class_size()  # an upper bound: OMP may stop short, the fill tops up to k

    def _wanted(self) -> dict:
        """What the scoring pass keeps: the per-class embedding needs the features and only the
        label's entry of p − onehot, which the loss gives (below), so no [n, C] table is kept;
        the bias embedding needs the errors alone."""
        if self.embedding == "per_class":
            return {"features": True}
        return {"errors": True} if self.embedding == "bias" else {"features": True, "errors": True}

    def _embed(self, table):
        if self.embedding == "full":
            return {"errors": table.errors, "features": table.features}
        if self.embedding == "per_class":
            # e_{i,y_i} = p_{y_i} − 1 = exp(−ℓ_i) − 1, as expm1 for accuracy near p = 1; the
            # embedding [e_y, e_y · h] written in place (no [n, D] temporary beside the features)
            e_y = torch.expm1(-table.loss.float())
            h = table.features
            embedding = torch.empty((h.shape[0], h.shape[1] + 1), device=h.device)
            embedding[:, 0] = e_y
            torch.mul(h, e_y.unsqueeze(1), out=embedding[:, 1:])  # bf16 features promoted in the product
            return {"embedding": embedding}
        return {"embedding": last_layer_embedding(table.errors)}

    def choose(self, epoch: int) -> Selection:
        ctx = self.context
        rows = self.candidates(self.pool, epoch, per_class=self.mode == "per_class")
        if world()[0] > 1 and self.mode == "per_class" and rows is None:
            result = self._spread(epoch)
        else:
            result = self._solve(epoch, rows)
        if result is None:  # rank 0 solves; the Driver hands its selection to this rank
            self._last = {"round": self.round(epoch)}
            return self.elsewhere()
        self._last = {"round": self.round(epoch), "size": int(result.indices.numel()), "filled": int(result.filled),
                      "residual_max": float(result.residual.max()) if result.residual.numel() else 0.0,
                      "fill_reasons": result.fill_reasons}
        selection = Selection(self.from_candidates(result.indices.cpu(), rows), result.weights.cpu().clamp_min(1e-12))
        if self._recorder is not None:
            self._recorder.add(epoch, ctx.epochs if self.every is None else min(epoch + self.every, ctx.epochs),
                               selection)
        return selection

    def _solve(self, epoch: int, rows: Optional[torch.Tensor]):
        """One process solves, over the pool or the candidates ``rows`` (its picks then index
        ``rows``): every rank's rows gathered to rank 0 alone (the others return None once they
        joined the scoring passes)."""
        ctx = self.context
        where = {"gather": "root"} if world()[0] > 1 else {}
        table = ctx.score(**self._wanted(), **where, **self.among(rows))
        val = ctx.score(split="val", **self._wanted(), **where) if self.target == "val" else None
        if not self.solves_here():
            return None
        kwargs = dict(labels=table.labels, budget=self.budget, mode=self.mode, batch_size=self.batch_size,
                      lam=self.lam, tol=self.tol, seed=derive_seed(ctx.seed, 2, self.round(epoch)))
        kwargs.update(self._embed(table))
        del table  # its features are in the embedding now: let them go before the solve
        if val is not None:
            kwargs.update({"val_" + key: value for key, value in self._embed(val).items()})
            kwargs["val_labels"] = val.labels
        return gradmatch(**kwargs)

    def _spread(self, epoch: int):
        """Under DDP, per class: each rank keeps the rows it scored, sends every row to the rank
        that owns its class (class c on rank c mod world) and solves those classes; rank 0 gathers
        the picks alone and fills up to the budget. No rank holds the whole table, and every
        class's problem is the one a single process solves (its rows in dataset order), so the
        subset is the same."""
        ctx = self.context
        counts = class_counts(ctx.labels, ctx.num_classes)  # every rank knows the labels: all refuse alike
        mine = self._routed(ctx.score(gather="local", **self._wanted()))
        val = self._routed(ctx.score(split="val", gather="local", **self._wanted())) if self.target == "val" else None
        index = mine.pop("index")
        picks = class_picks(mine.pop("labels"), class_budgets(counts, self.budget), **mine, lam=self.lam,
                            tol=self.tol, **({} if val is None else {"val_" + key: value for key, value in val.items()
                                                                     if key != "index"}))
        del mine, val
        joined = _gather_picks(picks, index, ctx.device)
        if not self.solves_here():
            return None
        return finish_classes(ctx.n, joined, self.budget, derive_seed(ctx.seed, 2, self.round(epoch)), index)

    def _routed(self, table) -> dict:
        """This rank's share of the classes: the embedding (or errors and features), labels and
        dataset rows of every sample whose class it owns, grouped by class and each class in
        dataset order (the rows a single process's problem has)."""
        ctx = self.context
        owner = table.labels % world()[0]
        meta = route_rows({"labels": table.labels, "index": table.index}, owner, ctx.device)
        order = torch.sort(meta["index"]).indices
        order = order[torch.sort(meta["labels"][order], stable=True).indices]
        place = torch.empty_like(order)
        place[order] = torch.arange(order.numel(), device=order.device)
        rows = self._embed(table)
        del table  # the embedding holds what the solve needs: each column freed once it has travelled
        rows = route_rows(rows, owner, ctx.device, place=place, consume=True)
        return {**rows, "labels": meta["labels"][order], "index": meta["index"][order]}

    def state_dict(self) -> dict:
        return {"recorded": self._recorder.rounds} if self._recorder is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self._recorder is not None:
            self._recorder.rounds = list(state.get("recorded", []))


def _gather_picks(picks: ClassPicks, index: torch.Tensor, device) -> Optional[ClassPicks]:
    """Every rank's class picks on rank 0 (rows of this rank's samples mapped to dataset rows
    through ``index``), in class order; None on the other ranks."""
    res = picks.res
    classes = torch.tensor(picks.classes, dtype=torch.int64)
    budgets = torch.tensor(picks.budgets, dtype=torch.int64)
    rows = torch.where(picks.picks >= 0, index[picks.picks.clamp_min(0)], picks.picks)
    per_pick = gather_rows({"pick": rows, "weight": picks.weights,
                            "class": torch.repeat_interleave(classes, budgets).to(rows.device)}, device, dst=0)
    per_class = gather_rows({"class": classes, "budget": budgets, "residual": res.residual.reshape(-1),
                             "iterations": res.iterations.reshape(-1), "target_norm": res.target_norm.reshape(-1),
                             "stop": res.stop.reshape(-1), "rejected": res.rejected.reshape(-1)}, device, dst=0)
    if world()[1] != 0:
        return None
    by_class = torch.sort(per_class["class"]).indices
    by_pick = torch.sort(per_pick["class"], stable=True).indices  # a class's picks keep OMP's order
    ordered = {name: value[by_class] for name, value in per_class.items()}
    joined = OMPResult(per_pick["pick"][by_pick], per_pick["weight"][by_pick], ordered["residual"],
                       ordered["iterations"], ordered["target_norm"], ordered["stop"], ordered["rejected"])
    return ClassPicks(ordered["class"].tolist(), ordered["budget"].tolist(), joined.indices, joined.weights, joined)


@dataclass
class Glister(Periodic):
    """GLISTER (Killamsetty et al. 2021b): greedy gains on the held-out selection split's
    likelihood after one last-layer step of ``eta`` (default: the run's learning rate);
    ``variant`` ``stochastic`` (default) or ``naive`` greedy; ``refresh`` picks between
    recomputations of the validation gradient (None: ``ceil(k / 64)``; 1: exact greedy; see
    ``datadiet.select.glister``); ``pool = P``: the greedy over a seeded random ``ceil(P · budget)``
    candidates per round instead of the whole pool. Weights are 1."""

    name = "glister"
    needs_head = True
    every: Optional[int] = 20
    eta: Optional[float] = None
    variant: str = "stochastic"
    refresh: Optional[int] = None
    pool: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"glister: variant must be one of {VARIANTS}, got {self.variant!r}")
        self.need(self.eta is None or self.eta >= 0, "eta", ">= 0 (the step size) or None (the run's lr)")
        self.need(self.refresh is None or (isinstance(self.refresh, int) and not isinstance(self.refresh, bool)
                                           and self.refresh >= 1), "refresh",
                  "an int >= 1 (picks per validation-gradient refresh) or None (ceil(k / 64))")
        self.check_pool(self.pool)

    def _val_blocks(self, table) -> dict:
        """This rank's whole blocks of held-out rows (block b of ``VAL_BLOCK`` rows on rank b mod
        world), ascending, from the rows it scored."""
        size, rank = world()
        count = torch.tensor([table.index.numel()], device=self.context.device)
        all_reduce_(count, "sum")
        self._val_size = int(count)
        owner = val_block_owner(table.index, size)
        mine = torch.arange(self._val_size)
        mine = mine[val_block_owner(mine, size) == rank].to(self.context.device)  # its ids, ascending
        order = route_rows({"index": table.index}, owner, self.context.device)["index"]
        place = torch.searchsorted(mine, order)
        return {"index": mine, **route_rows({"logits": table.logits, "labels": table.labels,
                                             "features": table.features}, owner, self.context.device, place=place)}

    def setup(self, context) -> None:
        super().setup(context)
        if not context.has_val:
            raise ValueError("glister: needs a held-out selection split (val_fraction > 0)")
        if self.eta is None:
            self.eta = context.lr

    def choose(self, epoch: int) -> Selection:
        ctx = self.context
        rows = self.candidates(self.pool, epoch)
        # under DDP each rank keeps the training rows it scored and whole blocks of the held-out
        # rows: the greedy runs sharded, every rank taking the same picks (select.glister)
        if world()[0] > 1:
            train = ctx.score(features=True, errors=True, gather="local", **self.among(rows))
            val = self._val_blocks(ctx.score(split="val", features=True, logits=True, gather="local"))
            shard = Shard(train.index, ctx.n if rows is None else rows.numel(), val["index"], self._val_size,
                          all_reduce_)
        else:
            train = ctx.score(features=True, errors=True, **self.among(rows))
            table = ctx.score(split="val", features=True, logits=True)
            val, shard = {"logits": table.logits, "labels": table.labels, "features": table.features}, None
        result = glister(train.errors, train.features, val["logits"], val["labels"], val["features"],
                         budget=self.budget, eta=self.eta, variant=self.variant,
                         seed=derive_seed(ctx.seed, 3, self.round(epoch)), refresh=self.refresh, shard=shard)
        del train, val
        if not self.solves_here():  # the same picks on every rank; the Driver hands out rank 0's
            self._last = {"round": self.round(epoch)}
            return self.elsewhere()
        self._last = {"round": self.round(epoch), "size": int(result.indices.numel()),
                      "gain_first": float(result.gains[0]) if result.gains.numel() else 0.0}
        return Selection(self.from_candidates(result.indices.cpu(), rows))
