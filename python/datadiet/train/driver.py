"""``Driver``: a strategy driving any training loop — the Trainer's and a user's own.

It owns what selection needs between the loop and the strategy: the index-aware dataset, the
sampler over the current selection (seeded, sharded, resumable), the per-sample weight table,
and the ``Context`` the strategy scores through. A user's loop needs five lines::

    driver = Driver(make("gradmatch", fraction=0.3, every=5), model, train_set, labels, num_classes=10, epochs=10)
    for epoch in range(driver.epochs):                 # 10, or fewer for an equal-budget baseline
        for x, y, i, w in driver.batches(epoch):      # re-selection at the epoch start, batch masks
            losses = F.cross_entropy(model(x), y, reduction="none")
            driver.loss(losses, i, w).backward(); opt.step(); opt.zero_grad()

``batches`` selects when the strategy's regime says so, shuffles the selection by (seed,
epoch), applies per-batch keep masks (the selection pass is eval-mode, no grad), and yields
inputs, targets, dataset indices and weights on the device (None when every weight is 1); ``loss`` reports the per-sample
losses to a strategy that observes them and returns ``Σ w ℓ / Σ w`` (under DDP, Σ w over all
ranks' batches, so the averaged gradient is that of the global weighted loss). Scoring passes
read ``score_set`` (the training samples with evaluation transforms; default ``train_set``).
Nothing in torch is patched and the strategy never sees the loop.

``max_selection_share = S`` (the Trainer's default 0.1; None here) keeps a periodic strategy's
re-selection from costing more than S of the training time: the interval is stretched from the
measured cost of a round and of a training epoch (``_guard``; ``batches`` books its own training
time, a loop over ``loader`` / ``prepare`` calls ``book_training`` each epoch).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from datadiet._dist import all_reduce_, clock, gather_rows, to_cpu, unwrap, world
from datadiet._seeds import derive_seed
from datadiet.ops.ce_scores import ce_scores
from datadiet.scores.scoring import ScoreTable, eval_mode, final_linear, score_dataset, score_shards
from datadiet.select.selection import Selection
from datadiet.strategies.base import Context, Strategy, check_strategy, is_number
from datadiet.train.data import IndexedDataset, SelectionSampler
from datadiet.train.datasets import per_sample_loss


# The shortest selection round (seconds) the guard weighs: below it the options alone fix the schedule.
GUARD_MIN_ROUND = 0.25


class Driver:
    def __init__(self, strategy: Strategy, model: nn.Module, train_set, labels: torch.Tensor, *, num_classes: int,
                 epochs: int, batch_size: int = 64, seed: int = 0, lr: float = 0.1, device="cpu", workers: int = 0,
                 val_set=None, score_set=None, head: Optional[str] = None, score_batch_size: int = 256,
                 proxy_scores: Optional[Callable[[int, int], ScoreTable]] = None,
                 autocast_dtype: Optional[torch.dtype] = None, channels_last: bool = False, progress=None,
                 run: Optional[dict] = None, task: str = "classification",
                 features_dtype: torch.dtype = torch.float32, max_selection_share: Optional[float] = None):
        if max_selection_share is not None and not (is_number(max_selection_share) and max_selection_share >= 0):
            raise ValueError(f"Driver: max_selection_share = {max_selection_share!r}: must be a number >= 0 (0 or "
                             "None: off)")
        self.max_selection_share = max_selection_share
        self.strategy, self.model, self.device = check_strategy("Driver", strategy), model, torch.device(device)
        self.task, self.per_sample_loss = task, per_sample_loss(task)
        self.train_set = train_set if isinstance(train_set, IndexedDataset) else IndexedDataset(train_set)
        self.val_set = None if val_set is None or isinstance(val_set, IndexedDataset) else IndexedDataset(val_set)
        self.score_set = self.train_set if score_set is None else (
            score_set if isinstance(score_set, IndexedDataset) else IndexedDataset(score_set))
        n = len(self.train_set)
        if len(self.score_set) != n:
            raise ValueError(f"Driver: score_set has {len(self.score_set)} samples, train_set {n}: they must be the "
                             "same samples (the scoring view only changes transforms)")
        if labels.shape != (n,):
            raise ValueError(f"Driver: labels must have shape [{n}] (one per training sample), got {tuple(labels.shape)}")
        _check_labels(labels, num_classes)
        # the epochs the loop trains: ``epochs`` but for an equal-budget baseline (Strategy.epochs_to_train)
        self.epochs = strategy.epochs_to_train(epochs)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= epochs:
            raise ValueError(f"Driver: strategy {strategy.name!r} asks for {self.epochs!r} epochs of {epochs}: "
                             f"epochs_to_train must return an int in [1, {epochs}]")
        self.batch_size, self.seed, self.workers = batch_size, seed, workers
        self.world_size, self.rank = world()
        self.head = final_linear(model, head) if (head is not None or strategy.needs_head) else _maybe_head(model)
        self._score_kwargs = dict(batch_size=score_batch_size, device=self.device, workers=workers,
                                  autocast_dtype=autocast_dtype, channels_last=channels_last, progress=progress,
                                  features_dtype=features_dtype)
        self.times = {"pretraining": 0.0, "selection": 0.0, "scoring": 0.0, "training": 0.0}
        self.stretches: list[dict] = []  # the guard's changes of the re-selection interval
        self._round: Optional[dict] = None  # the last selection: its epoch, cost, training time booked then
        self._stretched: Optional[list] = None  # [interval, since] the guard last gave the strategy
        strategy.setup(Context(n=n, labels=labels.cpu().long(), num_classes=num_classes, epochs=self.epochs,
                               seed=seed, batch_size=batch_size, lr=lr, device=self.device, rank=self.rank,
                               world_size=self.world_size, score=self.score,
                               proxy_scores=None if proxy_scores is None else self._timed(proxy_scores),
                               has_val=self.val_set is not None, run=dict(run or {})))
        self.sampler = SelectionSampler(Selection.full(n), n, seed=derive_seed(seed, 5),
                                        num_replicas=self.world_size, rank=self.rank)
        self.set_selection(self.sampler.selection)
        self.selections: list[dict] = []
        self._epoch, self._batch = 0, 0

    # -- selection -----------------------------------------------------------------------------
    def score(self, split: str = "train", model: Optional[nn.Module] = None, rows: Optional[Sequence[int]] = None,
              **wanted) -> ScoreTable:
        """One scoring pass (``Context.score``) over the pool or the held-out split, of the training
        model or of ``model`` (same architecture: its head at the training head's path); the time
        is booked as scoring. ``rows``: only these samples of the split (a shard; table row r is
        sample ``rows[r]``)."""
        if split not in ("train", "val"):
            raise ValueError(f"Context.score: split must be 'train' or 'val', got {split!r}")
        if self.task != "classification":
            raise ValueError(f"strategy {self.strategy.name!r} scores samples with classification scores (ce_scores); "
                             f"this run is a {self.task}: use full, random, random_online, random_pb, infobatch or "
                             "adaselection")
        if split == "val" and self.val_set is None:
            raise ValueError("Context.score: this run has no held-out selection split (val_fraction = 0)")
        start = clock(self.device)
        head = self.head if model is None else self._same_head(model)
        dataset = self.score_set if split == "train" else self.val_set
        if rows is not None:  # a shard, indexed from 0
            dataset = IndexedDataset(Subset(dataset.dataset, rows))
        table = score_dataset(self.model if model is None else model, dataset, head=head, **wanted,
                              **self._score_kwargs)
        self.times["scoring"] += clock(self.device) - start
        return table

    def score_shards(self, shards, model: Optional[nn.Module] = None, **wanted):
        """``score_shards`` over the pool's rows ``shards`` (ranges), of the training model or of
        ``model``; yields ``(s, table)`` per finished shard, the time spent scoring (not what the
        caller does between shards) booked as scoring. No collectives."""
        head = self.head if model is None else self._same_head(model)
        stream = score_shards(self.model if model is None else model, self.score_set, shards, head=head, **wanted,
                              **self._score_kwargs)
        while True:
            start = clock(self.device)
            try:
                item = next(stream)
            except StopIteration:
                return
            finally:
                self.times["scoring"] += clock(self.device) - start
            yield item

    def _same_head(self, model: nn.Module) -> Optional[nn.Linear]:
        """The module of ``model`` at the path the training model's head has (another model of
        the same architecture, e.g. a pre-trained scorer)."""
        if self.head is None:
            return None
        own = unwrap(self.model)
        name = next(n for n, m in own.named_modules() if m is self.head)
        return final_linear(model, name)

    def _timed(self, proxy_scores):
        """Proxy models' training booked as pre-training (the tax LiPT cuts); their scoring passes
        (through ``score``) stay scoring, as a pre-trained scorer's do."""
        def timed(epochs: int, init: int, **wanted) -> ScoreTable:
            start, scoring = clock(self.device), self.times["scoring"]
            table = proxy_scores(epochs, init, **wanted)
            self.times["pretraining"] += clock(self.device) - start - (self.times["scoring"] - scoring)
            return table
        return timed

    def steps_for(self, size: int) -> int:
        """Optimisation steps of an epoch over ``size`` samples (this rank's shard)."""
        return math.ceil(math.ceil(size / self.world_size) / self.batch_size)

    def planned_steps(self) -> int:
        """Optimisation steps of the whole run as the strategy plans it (sizes the lr schedule)."""
        return sum(self.steps_for(self.strategy.planned_size(e)) for e in range(self.epochs))

    def begin_epoch(self, epoch: int) -> None:
        """Asks the strategy for this epoch's selection: every rank joins its scoring passes and its
        solve where the strategy shares it out (GradMatch's classes, GLISTER's shards); rank 0's
        selection is used (``Strategy.solves_here``)."""
        self._guard(epoch)
        start, scoring = clock(self.device), self.times["scoring"] + self.times["pretraining"]
        selection = self.strategy.select(epoch)
        if selection is not None:
            if self.world_size > 1:
                box = [selection]
                torch.distributed.broadcast_object_list(box, src=0)
                selection = box[0]
            self.set_selection(selection)
            self.selections.append({"epoch": epoch, "size": len(self.sampler.selection),
                                    "weighted": selection.weights is not None, **self.strategy.report()})
        spent = clock(self.device) - start
        self.times["selection"] += spent - (self.times["scoring"] + self.times["pretraining"] - scoring)
        if selection is not None:
            self._round = {"epoch": epoch, "cost": spent, "trained": self.times["training"]}
            if self._stretched is not None:  # a stretched schedule counts from its latest selection
                self._stretched = [self._stretched[0], epoch]
                self.strategy.stretch(*self._stretched)
        self.sampler.set_epoch(epoch)
        self.sampler.resume_at(0)  # a fresh epoch: no offset left from a mid-epoch resume
        self._epoch, self._batch = epoch, 0

    def _guard(self, epoch: int) -> None:
        """Selection that pays for itself: a round costing c seconds (selection, scoring and
        pre-training) and epochs training for t seconds each take a share c / (R t) of the time
        when the selection is renewed every R epochs. With ``max_selection_share`` S a round must
        serve N = ceil(c / (S t)) epochs: the strategy's interval becomes R' = max(every, N), and
        none is made at all when the next one would serve fewer than N epochs before the run ends
        (R' = the run's epochs). Measured again at every epoch from ``every`` epochs after a
        selection on, from that round's cost and the mean training epoch since; each change is
        logged in ``stretches``. Under DDP the ranks' largest times decide, so every rank takes
        the same schedule. A loop that books no training time (``book_training``) is never
        stretched, nor a round under ``GUARD_MIN_ROUND`` seconds: a decision on times that small
        would follow the clock's noise, and a stretched schedule is one the options alone no longer
        fix (it is in the metrics and the checkpoint, so a resumed run keeps it)."""
        every = self.strategy.reselects_every()
        if not self.max_selection_share or every is None or self._round is None or \
                epoch - self._round["epoch"] < every:
            return
        since = self._round["epoch"]
        times = torch.tensor([self._round["cost"], self.times["training"] - self._round["trained"]],
                             dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        if self.world_size > 1:
            all_reduce_(times, "max")
        cost, trained = times.tolist()
        if trained <= 0 or cost < GUARD_MIN_ROUND:
            return
        per_epoch = trained / (epoch - since)
        needed = min(self.epochs, math.ceil(cost / (self.max_selection_share * per_epoch)))
        interval = max(every, needed)
        if since + interval > self.epochs - needed:  # the next round could not serve enough epochs
            interval = self.epochs
        previous = every if self._stretched is None else self._stretched[0]
        if interval == previous or not self.strategy.stretch(interval, since):
            return  # the own schedule stands (or the stretch stands as it was)
        self.stretches.append({"epoch": epoch, "interval": interval, "every": every, "round_cost": cost,
                               "epoch_training": per_epoch, "share": cost / (every * per_epoch)})
        self._stretched = [interval, since]

    def book_training(self, seconds: float) -> None:
        """Adds ``seconds`` of training to ``times["training"]`` (what the selection guard compares a
        round's cost with); ``batches`` books its own, a loop over ``loader`` / ``prepare`` books
        each epoch's."""
        self.times["training"] += float(seconds)

    def set_selection(self, selection: Selection) -> None:
        self.sampler.set_selection(selection)
        self.weights = self.sampler.selection.weight_table(self.sampler.n).to(self.device)
        # The plain mean only when no batch can carry weights or a mask — a fact every rank shares,
        # so under DDP all ranks take the same loss path (and the same collectives).
        self._uniform = self.sampler.selection.weights is None and not self.strategy.filters_batches

    @property
    def next_epoch(self) -> int:
        """The epoch a loop continues with from this driver's (restored) state: the one after the
        last finished epoch (0 before any)."""
        finished = self._batch > 0 and self._batch >= self.steps_per_epoch()
        return self._epoch + 1 if finished else self._epoch

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    # -- batches -------------------------------------------------------------------------------
    def loader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=False,
                          generator=torch.Generator().manual_seed(derive_seed(self.seed, 7, self._epoch)))

    def batches(self, epoch: Optional[int] = None) -> Iterator[tuple]:
        """(x, y, indices, weights) on the device for the epoch (``begin_epoch`` first when given)."""
        if epoch is not None:
            self.begin_epoch(epoch)
        start = clock(self.device)
        try:
            for x, y, i in self.loader():
                yield self.prepare(x, y, i)
        finally:  # the caller's steps happen between the yields: the whole iteration is training
            self.book_training(clock(self.device) - start)

    def prepare(self, x, y, i, channels_last: bool = False) -> tuple:
        """Moves a batch to the device, looks its weights up and applies the strategy's batch mask."""
        x = x.to(self.device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y).to(self.device, non_blocking=True)
        i = torch.as_tensor(i).to(self.device, non_blocking=True)
        progress = (self._epoch + self._batch / max(1, self.steps_per_epoch())) / self.epochs
        self._batch += 1
        mask = self.strategy.batch_mask(progress, lambda scale, details=False: self._batch_losses(x, y, scale, details))
        if mask is not None:
            kept = mask.nonzero().flatten()  # the step's one host synchronisation: how many rows stay
            if kept.numel() == 0:  # nothing kept: one sample with weight 0 keeps DDP's ranks in step
                return x[:1], y[:1], i[:1], torch.zeros(1, device=self.device)
            x, y, i = x[kept], y[kept], i[kept]
        elif self._uniform:
            return x, y, i, None  # every weight 1 and never a mask: the plain mean, no lookup
        return x, y, i, self.weights[i]

    def _batch_losses(self, x, y, scale: float, details: bool = False):
        """The selection pass: per-sample losses, or with ``details`` (losses, ‖p − y‖, correct;
        a regression: losses, √ℓ, None)."""
        model = unwrap(self.model)
        if scale < 1.0 and x.dim() == 4:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        dtype = self._score_kwargs["autocast_dtype"]  # the run's precision, as its training forward
        with eval_mode(model), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x).float()
        if not details:
            return self.per_sample_loss(logits, y)
        if self.task == "regression":  # the output gradient of the squared error is 2|ŷ − y|: ∝ √ℓ
            losses = self.per_sample_loss(logits, y)
            return losses, losses.sqrt(), None
        if self.task == "language":  # per sequence: the mean token loss and ‖p − y‖; no class to be right on
            s = ce_scores(logits.flatten(0, 1), y.flatten())
            return s.loss.view(y.shape).mean(1), s.el2n.view(y.shape).mean(1), None
        s = ce_scores(logits, y)
        return s.loss, s.el2n, s.correct

    def loss(self, losses: torch.Tensor, indices: torch.Tensor, weights: Optional[torch.Tensor],
             correct: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Σ w ℓ / Σ w`` over the batch, or ``Σ w ℓ / n`` for a strategy whose weights rescale the
        loss (``rescales_loss``) (``weights`` None: every weight 1, the plain mean; every rank's batch
        then has the same size); the per-sample losses (and ``correct``) go to a
        strategy that observes training (gathered over ranks first)."""
        if losses.shape != indices.shape:
            raise ValueError(f"Driver.loss: losses must be per-sample, shape {tuple(indices.shape)}, got "
                             f"{tuple(losses.shape)}")
        if self.strategy.observes:
            if correct is None:
                if self.strategy.observes_correct:
                    raise ValueError(f"Driver.loss: strategy {self.strategy.name!r} counts correct classifications; "
                                     "pass correct=(logits.argmax(1) == targets)")
                correct = torch.zeros_like(indices, dtype=torch.bool)
            seen_w = torch.ones_like(losses, dtype=torch.float32) if weights is None else weights.float()
            seen_i, seen_loss, seen_correct = indices, losses.detach().float(), correct
            if self.world_size > 1:
                # one float64 table (indices < 2**53 and float32 values are exact in it): two
                # collectives a step (the ranks' lengths, the rows) instead of one per column
                rows = torch.stack([seen_i.double(), seen_loss.double(), seen_correct.double(), seen_w.double()], 1)
                rows = gather_rows({"rows": rows}, self.device)["rows"]
                seen_i, seen_loss, seen_correct, seen_w = (rows[:, 0].long(), rows[:, 1].float(), rows[:, 2] > 0,
                                                           rows[:, 3])
            real = seen_w > 0  # a weight-0 placeholder row was not trained on
            self.strategy.observe(seen_i[real], seen_loss[real], seen_correct[real])
        if weights is None:
            return losses.mean()
        total = weights.sum() if not self.strategy.rescales_loss else torch.full((), float(weights.numel()),
                                                                                 device=weights.device)
        if self.world_size > 1:  # DDP averages gradients over ranks: normalise by the mean Σ w
            total = total.detach().clone()
            torch.distributed.all_reduce(total)
            total = total / self.world_size
        return (weights * losses).sum() / total.clamp_min(1e-12)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self, with_strategy: bool = True) -> dict:
        """The sampler (subset, weights, epoch), timings, selection log, position in the epoch and,
        unless the caller keeps it apart (per rank), the strategy's state."""
        state = {"sampler": self.sampler.state_dict(), "times": dict(self.times), "selections": list(self.selections),
                 "epoch": self._epoch, "batch": self._batch,
                 "guard": {"round": self._round, "stretched": self._stretched, "stretches": list(self.stretches)}}
        if with_strategy:
            state["strategy"] = self.strategy.state_dict()
        return state

    def checkpoint_state(self) -> dict:
        """``state_dict`` with every rank's strategy state in ``strategy_by_rank`` (a per-batch
        selector's history holds its rank's losses), for frameworks whose checkpoint rank 0 writes
        alone (Lightning, accelerate). Every rank must call it (it gathers)."""
        state = self.state_dict(with_strategy=False)
        mine = to_cpu(self.strategy.state_dict())
        ranks = [mine]
        if self.world_size > 1:
            ranks = [None] * self.world_size
            torch.distributed.all_gather_object(ranks, mine)
        state["strategy_by_rank"] = ranks
        return state

    def load_checkpoint_state(self, state: dict) -> None:
        """Restores a ``checkpoint_state``: the shared part, and this rank's strategy state."""
        ranks = state["strategy_by_rank"]
        if len(ranks) != self.world_size:
            raise ValueError(f"Driver: this checkpoint was written by {len(ranks)} ranks, this run has "
                             f"{self.world_size}: a strategy's per-rank state cannot be redistributed")
        self.load_state_dict(state, strategy=ranks[self.rank])

    def load_state_dict(self, state: dict, strategy: Optional[dict] = None) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.set_selection(self.sampler.selection)
        self.strategy.load_state_dict(state["strategy"] if strategy is None else strategy)
        self.times.update(state["times"])  # a checkpoint from before "pretraining" keeps it at 0
        self.selections = list(state["selections"])
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        guard = state.get("guard", {})  # a checkpoint from before the guard: nothing stretched
        self._round, self._stretched = guard.get("round"), guard.get("stretched")
        self.stretches = list(guard.get("stretches", []))
        if self._stretched is not None:
            self.strategy.stretch(*self._stretched)

    def resume_mid_epoch(self) -> None:
        """After ``load_state_dict``: when the state was saved inside an epoch, the sampler's next
        iteration skips what that epoch already drew (a loop that restarts the epoch where it
        stopped, without ``begin_epoch``)."""
        if 0 < self._batch < self.steps_per_epoch():
            self.sampler.resume_at(self._batch * self.batch_size)


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Class ids in [0, num_classes) (a regression's: all 0, num_classes = 1): strategies count
    and group samples by them, and an id out of range would silently index another class or size a
    table by its value."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Driver: num_classes must be an int >= 1, got {num_classes!r}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"Driver: labels must be an integer tensor of class ids, got {labels.dtype}")
    outside = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(outside):
        i = int(outside[0, 0])
        raise ValueError(f"Driver: labels must be in [0, num_classes = {num_classes}), found {int(labels[i])} "
                         f"(sample {i})")


def _maybe_head(model: nn.Module):
    try:
        return final_linear(model)
    except ValueError:
        return None

