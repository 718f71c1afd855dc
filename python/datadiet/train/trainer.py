"""``Trainer``: the reference training loop. One strategy interface for every selection regime
(the ``Driver`` asks the strategy; the loop never names one), SGD / AdamW with step-based
schedules sized from the strategy's planned subset sizes, the weighted loss ``Σ w ℓ / Σ w``,
AMP, ``channels_last``, ``torch.compile``, DDP under torchrun, JSONL metrics, tqdm progress and
exact resume.

Resume: ``out/checkpoint.pt`` (``datadiet.train.checkpoint``: atomic, checksummed, refused when
from another configuration) holds the model, optimiser, scheduler, scaler, epoch and step, the
driver (sampler with the current subset and weights, the strategy's state) and the global RNG,
written at every epoch end and every ``checkpoint_every`` steps. A killed run resumed with
``resume=out`` continues mid-epoch where the checkpoint was taken and, on CPU, ends with the
parameters of the run never stopped (loader workers with random augmentation are re-seeded per
epoch, so a mid-epoch resume with ``workers > 0`` and random transforms draws other augmentations).

The output folder (``datadiet.runfolder``) is claimed and locked by rank 0 before anything is
read; one holding another run's results is refused unless the run resumes it or ``overwrite``
replaces them. ``RunStopped`` ends a run early, the last good checkpoint kept: ``nonfinite_steps``
non-finite training steps in a row (the ones before are skipped), or a sample that cannot be read
(checkpointed first inside an epoch, so a resume continues at that batch once the file is fixed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from datadiet import runfolder
from datadiet import strategies as strategy_registry
from datadiet._dist import init as dist_init
from datadiet._dist import clock, rank0_first, to_cpu, world
from datadiet._seeds import derive_seed, seeded_global_rng
from datadiet.scores.scoring import eval_mode
from datadiet.strategies.base import Strategy
from datadiet.train import checkpoint, datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.data import IndexedDataset
from datadiet.train.driver import Driver
from datadiet.train.schedules import schedule

CHECKPOINT = "checkpoint.pt"
RESULTS = (CHECKPOINT, "config.json", "metrics.jsonl", "summary.json")  # what a run leaves in its folder


class RunStopped(RuntimeError):
    """Training ended early for a reason the run reports in one line (non-finite losses, an
    unreadable sample); the last good checkpoint is kept."""


class Trainer:
    def __init__(self, config: TrainConfig, strategy: Optional[Strategy] = None, *,
                 data: Optional[datasets.DataBundle] = None, initial_state: Optional[dict] = None):
        """``strategy``: an object instead of ``config.strategy``; ``data``: an already loaded
        ``DataBundle`` for ``config.dataset``; ``initial_state``: model weights to start from
        (pipelines continue a model in stages)."""
        self.config = config = config.validate()
        if config.resume and config.out is None:
            config.out = config.resume
        self.subset = None
        if config.subset is not None:  # read and checked before anything is written
            from datadiet.selection import files as subset_files

            self.subset = subset_files.load(config.subset)
            strategy = strategy_registry.FixedSubset(indices=self.subset.indices, weights=self.subset.weights)
        if strategy is None:  # a bad strategy parameter is refused before anything is read or written
            params = config.strategy_kwargs(strategy_registry.parameters(config.strategy))
            strategy = strategy_registry.make(config.strategy, **params)
        self.device = dist_init(config.device, config.dist_timeout)
        self.world_size, self.rank = world()
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"config amp = 'fp16': float16 autocast needs a CUDA device, this run uses "
                             f"{self.device} (use bf16)")
        self._folder = rank0_first(self._claim_out)  # before any data is read or model built
        try:
            self._setup(strategy, data, initial_state)
        except BaseException:
            self.release()
            raise

    def _setup(self, strategy: Strategy, data: Optional[datasets.DataBundle], initial_state: Optional[dict]) -> None:
        config = self.config
        self.autocast_dtype = config.autocast_dtype
        bundle = data if data is not None else config.load_data()
        self.num_classes, self.input_shape, self.task = bundle.num_classes, bundle.input_shape, bundle.task
        if self.subset is not None:
            _check_subset(self.subset, bundle)
        val_fraction = 0.0 if self.subset is not None else config.val_fraction  # a subset indexes the whole split
        pool, held_out = pool_split(len(bundle.train), val_fraction, bundle.unusable_train())
        if self.subset is not None:  # dataset indices -> positions in the pool (skipped samples are not in it)
            strategy.indices = torch.searchsorted(pool, self.subset.indices)
        self.skipped = bundle.skipped
        self.train_set = Subset(bundle.train, pool.tolist())
        scored = datasets.scoring_view(bundle, config.dataset, config.score_image_size)  # pool and held-out alike
        val_set = Subset(scored, held_out.tolist()) if held_out.numel() else None
        self.test_set = bundle.test
        self.test_loader = DataLoader(Subset(bundle.test, list(range(self.rank, len(bundle.test), self.world_size))),
                                      batch_size=config.eval_batch_size, num_workers=config.workers,
                                      pin_memory=self.device.type == "cuda",
                                      persistent_workers=config.workers > 0)  # evaluated every epoch
        torch.manual_seed(config.seed)
        self.model = self._build_model()
        if initial_state is not None:
            self.model.load_state_dict(initial_state)
        self.identity = {**config.identity(), "strategy_object": strategy.describe()}
        if self.subset is not None:  # the recorded samples themselves, not only the folder's name
            self.identity["subset_sha256"] = self.subset.manifest["files"]["subset.csv"]
        self.driver = Driver(strategy, self.model, self.train_set, bundle.labels[pool], num_classes=self.num_classes,
                             epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, lr=config.lr,
                             device=self.device, workers=config.workers, val_set=val_set,
                             score_set=Subset(scored, pool.tolist()), head=config.head,
                             score_batch_size=config.eval_batch_size, proxy_scores=self.proxy_scores,
                             autocast_dtype=self.autocast_dtype, channels_last=config.channels_last,
                             features_dtype=config.features_dtype, progress=self._bar("scoring"),
                             run=config.identity(), task=self.task,
                             max_selection_share=config.max_selection_share)
        net = self.model
        if self.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net = torch.compile(net) if config.compile else net
        self.optimizer = self._optimizer(self.model)
        planned = max(1, self.driver.planned_steps())
        self.scheduler = schedule(self.optimizer, config.schedule, planned, min(config.warmup_steps, planned - 1),
                                  final=config.final_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []
        self._partial: Optional[dict] = None  # the running epoch's sums, saved with a mid-epoch checkpoint
        self._nonfinite = 0  # non-finite training losses in a row
        if config.resume:
            self._load(os.path.join(config.resume, CHECKPOINT))
        elif config.out and self.rank == 0:
            runfolder.write_json(os.path.join(config.out, "config.json"), dataclasses.asdict(config))

    def _claim_out(self) -> Optional[runfolder.RunFolder]:
        """Locks ``out`` for this run; a folder holding another run's results is refused unless
        the run resumes it or ``overwrite`` replaces them."""
        cfg = self.config
        if not cfg.out:
            return None
        if cfg.resume and cfg.overwrite:
            raise ValueError(f"config resume = {cfg.resume!r} and overwrite = True: choose one (resume continues the "
                             "run, overwrite replaces it)")
        folder = runfolder.claim(cfg.out)
        continuing = cfg.resume and os.path.realpath(cfg.resume) == os.path.realpath(cfg.out)
        try:
            if cfg.overwrite:
                runfolder.remove(cfg.out, RESULTS)
            elif not continuing:
                runfolder.refuse_previous(cfg.out, runfolder.previous(cfg.out, RESULTS), resume=f"--resume {cfg.out}")
        except BaseException:
            folder.release()
            raise
        return folder

    def release(self) -> None:
        """Drops the lock on ``out`` (``fit`` does it when it ends)."""
        if self._folder is not None:
            self._folder.release()
            self._folder = None

    # -- setup ---------------------------------------------------------------------------------
    def _build_model(self) -> torch.nn.Module:
        model = models.build(self.config.model, self.num_classes, self.input_shape, self.config.width).to(self.device)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _optimizer(self, model) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _bar(self, desc: str):
        """A tqdm wrapper on rank 0 when stderr is a terminal; otherwise the iterable itself."""
        if not (self.config.progress and self.rank == 0 and sys.stderr.isatty()):
            return lambda iterable, **kw: iterable
        return lambda iterable, **kw: tqdm(iterable, desc=desc, leave=False, **kw)

    def proxy_scores(self, epochs: int, init: int, **wanted):
        """A fresh model (initialisation ``init``) trained ``epochs`` epochs on the full pool, scored
        (``wanted``: options of the scoring pass). Under DDP the proxy is trained once, by DDP over
        the ranks (each rank a shard of every epoch, gradients averaged), so every rank scores its
        shard with the same model; fp16 has its gradient scaler, as the run does."""
        cfg = self.config
        with seeded_global_rng(derive_seed(cfg.seed, 6, init)):
            model = self._build_model()
            if epochs:
                opt = self._optimizer(model)
                pool = IndexedDataset(self.train_set)
                shuffle = derive_seed(cfg.seed, 8, init)
                size, rank = world()  # at the call: inside alone() a rank trains a proxy of its own
                sampler = (torch.utils.data.DistributedSampler(pool, size, rank, shuffle=True, seed=shuffle)
                           if size > 1 else None)
                loader = DataLoader(pool, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                                    num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                    generator=torch.Generator().manual_seed(shuffle) if sampler is None else None)
                net = model if size == 1 else torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
                sched = schedule(opt, cfg.schedule, epochs * len(loader))
                for epoch in range(epochs):
                    if sampler is not None:
                        sampler.set_epoch(epoch)
                    for x, y, _i in self._bar(f"proxy {init}")(loader):
                        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                            enabled=self.autocast_dtype is not None):
                            out = net(x.to(self.device, non_blocking=True))
                        loss = self.driver.per_sample_loss(out, y.to(self.device)).mean()
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        sched.step()
                if size > 1:  # BatchNorm statistics as rank 0 has them, as after training
                    for buffer in model.buffers():
                        torch.distributed.broadcast(buffer, 0)
            return self.driver.score(model=model, **wanted)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        try:
            return self._epochs()
        except datasets.SampleError as exc:
            raise self._unreadable(exc) from exc

    def _epochs(self) -> dict:
        cfg, drv = self.config, self.driver
        self._clock = time.perf_counter()
        for epoch in range(self.epoch, drv.epochs):
            if self._partial is None:
                # what this epoch's start adds to the logs: its selection, the guard's decision
                times0, logs = dict(drv.times), (len(drv.selections), len(drv.stretches))
                drv.begin_epoch(epoch)
                self._partial = {"loss": 0.0, "samples": 0, "steps": 0, "training": 0.0, "times0": times0,
                                 "selection_log": logs[0], "stretch_log": logs[1]}
                self._replan(epoch)
            self.epoch = epoch
            times0 = self._partial["times0"]
            self._train_epoch()
            drv.book_training(self._partial["training"])  # what the selection guard weighs a round against
            t_eval = clock(self.device)
            self._sync_buffers()
            test_acc, test_loss = self.evaluate()
            evaluation = clock(self.device) - t_eval
            part = self._partial
            samples = self._sum(part["samples"])
            record = {"epoch": epoch, "train_loss": self._sum(part["loss"]) / max(1, samples),
                      "test_acc": test_acc, "test_loss": test_loss,
                      "subset_size": len(drv.sampler.selection), "samples": int(samples), "steps": part["steps"],
                      "lr": self.optimizer.param_groups[0]["lr"],
                      "time": {"pretraining": drv.times["pretraining"] - times0.get("pretraining", 0.0),
                               "selection": drv.times["selection"] - times0["selection"],
                               "scoring": drv.times["scoring"] - times0["scoring"],
                               "training": part["training"], "evaluation": evaluation},
                      "selections": drv.selections[part["selection_log"]:], "skipped_samples": len(self.skipped)}
            stretched = drv.stretches[part.get("stretch_log", len(drv.stretches)):]
            if stretched:
                record["stretches"] = stretched
            if self.task == "language":  # perplexity per byte: exp of the mean next-byte loss
                record["test_perplexity"] = math.exp(min(test_loss, 700.0))
            learned = drv.strategy.log()
            if learned:
                record["strategy"] = learned
            self._tick()
            record["wall"] = self.elapsed
            self.history.append(record)
            self.epoch, self._partial = epoch + 1, None
            self._write_metrics()
            self._save()
        summary = self._summary()
        if cfg.out and self.rank == 0:
            runfolder.write_json(os.path.join(cfg.out, "summary.json"), summary)
        return summary

    def _replan(self, epoch: int) -> None:
        """Re-sizes the lr schedule once an epoch's subset is known: the steps done, this epoch's
        steps and the strategy's plan for the rest (equal to the first plan when sizes are exact)."""
        drv, cfg = self.driver, self.config
        plan, actual = drv.strategy.planned_size(epoch), len(drv.sampler.selection)
        # Later epochs of the same plan keep this selection's real size until a new one is made.
        later = sum(drv.steps_for(actual if drv.strategy.planned_size(e) == plan else drv.strategy.planned_size(e))
                    for e in range(epoch + 1, drv.epochs))
        total = self.step + drv.steps_per_epoch() + later
        if total != self.scheduler.total_steps:
            self.scheduler.resize(total)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.elapsed += now - self._clock
        self._clock = now

    def _train_epoch(self) -> None:
        cfg, drv, part = self.config, self.driver, self._partial
        self.net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        steps = drv.steps_per_epoch()
        bar = self._bar(f"epoch {self.epoch}")(drv.loader(), total=steps - part["steps"])
        try:
            for x, y, i in bar:
                x, y, i, w = drv.prepare(x, y, i, cfg.channels_last)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    logits = self.net(x)
                losses = drv.per_sample_loss(logits, y)
                correct = logits.argmax(1) == y if drv.strategy.observes and self.task == "classification" else None
                if self._finite(losses):  # a non-finite loss's step is skipped (or the run stops)
                    loss = drv.loss(losses, i, w, correct)  # only then seen by a strategy observing training
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    loss_sum += losses.detach().sum()
                    part["samples"] += int(i.numel())
                self.scheduler.step()
                self.step += 1
                part["steps"] += 1
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and part["steps"] < steps:
                    part["loss"] += float(loss_sum)
                    loss_sum.zero_()
                    part["training"] += time.perf_counter() - start
                    start = time.perf_counter()
                    self._save()
        finally:  # also when a sample cannot be read: the batches before it are trained and kept
            part["loss"] += float(loss_sum)
            part["training"] += time.perf_counter() - start

    def _unreadable(self, exc: "datasets.SampleError") -> RunStopped:
        """The run stops at an unreadable sample. Inside an epoch (training or evaluating) a
        checkpoint keeps what it trained, and a resume once the file is readable continues at that
        batch; in a scoring pass the last epoch-end checkpoint stands."""
        cfg = self.config
        saved = self.world_size == 1 and bool(cfg.out) and self._partial is not None  # DDP: no rank could join
        if saved:
            self._save()
        where = f"; checkpointed at epoch {self.epoch}, step {self.step}" if saved else ""
        resume = f"; replace the file with a readable one and continue with --resume {cfg.out}" if cfg.out else ""
        return RunStopped(f"{exc}{where}{resume} (or start the run again with --skip-bad-samples to leave "
                          "unreadable files out)")

    def _finite(self, losses: torch.Tensor) -> bool:
        """Whether this step's per-sample losses are all finite (on every rank: under DDP all ranks
        skip the step or none, as the gradient all-reduce needs them all); ``nonfinite_steps``
        non-finite steps in a row stop the run, its last checkpoint untouched. One host sync per
        step."""
        bad = (~torch.isfinite(losses.detach()).all()).to(torch.float32)
        if self.world_size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bool(bad):
            self._nonfinite = 0
            return True
        self._nonfinite += 1
        if self._nonfinite >= self.config.nonfinite_steps:
            row = f" ({self._nonfinite} in a row)" if self._nonfinite > 1 else ""
            saved = self.config.out and os.path.isfile(os.path.join(self.config.out, CHECKPOINT))
            kept = f"; the last checkpoint in {self.config.out} is kept" if saved else ""
            loss = losses.detach().float().mean()
            raise RunStopped(f"the training loss is {float(loss)} at epoch {self.epoch}, step {self.step + 1}{row}"
                             f"{kept} (lower --lr, or let --nonfinite-steps N skip up to N-1 such steps in a row)")
        return False

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank before evaluating and scoring: DDP
        broadcasts them only at the start of each training forward, so the last step's update
        differs by rank."""
        if self.world_size > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def evaluate(self, model: Optional[torch.nn.Module] = None) -> tuple[Optional[float], float]:
        """Accuracy (None for a regression) and mean per-sample loss of ``model`` (default: the
        trained one) on the test split (each rank its shard, summed over ranks)."""
        model = self.model if model is None else model
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        with eval_mode(model):
            for x, y in self.test_loader:
                x, y = x.to(self.device, non_blocking=True), torch.as_tensor(y).to(self.device, non_blocking=True)
                if self.config.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    logits = model(x).float()
                if self.task == "classification":
                    sums[0] += (logits.argmax(1) == y).sum()
                sums[1] += self.driver.per_sample_loss(logits, y).sum()
                sums[2] += len(y)  # samples (a language task's loss is per sequence)
        if self.world_size > 1:
            torch.distributed.all_reduce(sums)
        correct, loss, count = sums.tolist()
        if count == 0:  # no test split (a features file without test arrays)
            return None, float("nan")
        return (correct / count if self.task == "classification" else None), loss / count

    def _sum(self, value: float) -> float:
        if self.world_size == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t)

    # -- state ---------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        """What differs between ranks: the RNG, the running epoch's sums, the strategy's state
        (a per-batch selector's history holds this rank's losses)."""
        return to_cpu({"rng": torch.get_rng_state(), "partial": self._partial,
                        "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                        "strategy": self.driver.strategy.state_dict()})

    def state_dict(self) -> dict:
        """The whole run; ``ranks`` holds every rank's ``_rank_state`` (gathered under DDP)."""
        ranks = [self._rank_state()]
        if self.world_size > 1:  # rank 0 writes the checkpoint: it alone receives the others' states
            gathered = [None] * self.world_size if self.rank == 0 else None
            torch.distributed.gather_object(ranks[0], gathered, dst=0)
            ranks = gathered
        driver = self.driver.state_dict(with_strategy=False)
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed, "history": self.history,
                "driver": driver, "ranks": ranks, "world_size": self.world_size}

    def _save(self) -> None:
        if not self.config.out:
            return
        self._tick()
        state = self.state_dict()
        if self.rank == 0:
            checkpoint.save(os.path.join(self.config.out, CHECKPOINT), state, self.identity)
        if self.world_size > 1:
            torch.distributed.barrier()

    def _load(self, path: str) -> None:
        state = checkpoint.load(path, self.identity)
        if state["world_size"] != self.world_size:
            raise checkpoint.CheckpointError(f"checkpoint {path}: written by {state['world_size']} ranks, this run "
                                             f"has {self.world_size}")
        mine = state["ranks"][self.rank]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.elapsed = int(state["epoch"]), int(state["step"]), float(state["elapsed"])
        self.history, self._partial = list(state["history"]), mine["partial"]
        self.driver.load_state_dict(state["driver"], strategy=mine["strategy"])
        if self._partial is not None:
            # (an epoch stopped while evaluating has drawn all its batches: nothing left to draw)
            self.driver.sampler.resume_at(min(self._partial["steps"] * self.config.batch_size, len(self.driver.sampler)))
        torch.set_rng_state(mine["rng"])
        if mine["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], self.device)

    def _write_metrics(self) -> None:
        """The JSONL of every finished epoch, rewritten whole (so a resumed run never repeats a line)."""
        if self.config.out and self.rank == 0:
            runfolder.write_text(os.path.join(self.config.out, "metrics.jsonl"),
                                 "".join(runfolder.dumps(r) + "\n" for r in self.history))

    def _summary(self) -> dict:
        totals = {k: sum(r["time"][k] for r in self.history) for k in ("pretraining", "selection", "scoring",
                                                                        "training", "evaluation")}
        last = self.history[-1] if self.history else {}
        evaluated, train_curve = 0.0, []  # the curve without the per-epoch test evaluations' time
        for r in self.history:
            evaluated += r["time"]["evaluation"]
            train_curve.append((r["wall"] - evaluated, r["test_acc"]))
        strategy = f"subset {self.config.subset}" if self.config.subset else self.config.strategy
        return {"config": self.identity, "strategy": strategy, "epochs": len(self.history),
                "steps": self.step, "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
                **({"test_perplexity": last.get("test_perplexity")} if self.task == "language" else {}),
                "best_test_acc": max((r["test_acc"] for r in self.history if r["test_acc"] is not None), default=None),
                "wall": self.elapsed,
                "time": totals, "samples": sum(r["samples"] for r in self.history),
                "curve": [(r["wall"], r["test_acc"]) for r in self.history], "train_curve": train_curve,
                "selections": self.driver.selections, "stretches": self.driver.stretches,
                # subsets chosen (a warm start's or the full strategy's whole pool is no round)
                "rounds": sum(s["size"] < self.driver.sampler.n for s in self.driver.selections),
                "world_size": self.world_size, "skipped_samples": self.skipped}


def _check_subset(subset, bundle: datasets.DataBundle) -> None:
    """A selection folder must come from this training split (size and fingerprint) and name no
    sample this run leaves out as unreadable."""
    from datadiet.selection import files as subset_files

    saved, here = subset.manifest["dataset"], subset_files.dataset_fingerprint(bundle.train, bundle.labels)
    if saved.get("samples") != here["samples"] or saved.get("sha256") != here["sha256"]:
        what = (f"{saved.get('samples')} samples, this dataset has {here['samples']}"
                if saved.get("samples") != here["samples"] else f"another {here['by']} digest")
        raise ValueError(f"config subset = {subset.folder!r}: selected from another dataset ({saved.get('spec')!r}: "
                         f"{what})")
    bad = sorted(set(bundle.unusable_train()) & set(subset.indices.tolist()))
    if bad:
        raise ValueError(f"config subset = {subset.folder!r}: lists unreadable sample {bad[0]} (left out by "
                         "skip_bad_samples)")


def pool_split(n: int, val_fraction: float, unusable=()) -> tuple[torch.Tensor, torch.Tensor]:
    """(training pool, held-out selection split): a fixed permutation (seed 0), the same for every
    run seed and strategy, so a comparison trains every strategy on the same pool. ``unusable``
    indices (unreadable files a run skips) are left out of both, the others keeping their side."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    m = math.floor(val_fraction * n)
    pool, held_out = perm[m:].sort().values, perm[:m].sort().values
    if len(unusable):
        bad = torch.as_tensor(list(unusable), dtype=torch.int64)
        pool, held_out = pool[~torch.isin(pool, bad)], held_out[~torch.isin(held_out, bad)]
    return pool, held_out

