"""LiPT: lightweight distributed pre-training for gradient-based subset selection, over the ``Trainer``.

1. ``n_workers`` workers start from one initial model θ*. Worker w gets ``worker_batches`` (M)
   disjoint random minibatches of ``worker_batch_size`` from the training pool (together
   ``n_workers·M·worker_batch_size`` samples; the paper ships 2–25% of the data) and takes
   ``worker_steps`` (K) optimiser steps on them,
   cycling, with no communication. ``task="jigsaw"`` (default): every image is cut into a
   ``grid × grid`` jigsaw, its tiles re-assembled by a permutation drawn from a fixed set, and a
   jigsaw head (the classification layer's place, one output per permutation) predicts which;
   ``task="supervised"`` trains the classifier on the labels instead. Every image gets its own
   RandAugment (``augment_ops`` ops of torchvision's 14 at ``magnitude``; paper: 9) in place of
   the usual crop/flip, re-drawn every step.
2. Each worker prunes its model once by global weight magnitude (``datadiet.prune.magnitude``:
   biases and normalisation layers kept) to a density drawn from U[``density``] by a seeded
   generator — one density per worker id, the same however workers map to ranks.
3. One gather of the worker models to rank 0, which merges them: ``merge="greedy"`` sorts them by
   held-out score (jigsaw or class accuracy on the held-out split, ``val_fraction``) and takes
   each next one only if some interpolation ratio α of ``alphas`` (soup·(1 − α) + θ·α) raises the
   score; ``merge="uniform"`` averages every surviving worker (the paper's App. C contrast). The
   result is dense. BatchNorm buffers are interpolated with the weights (``bn="average"``) or
   re-estimated on the workers' data (``bn="reestimate"``).
4. The scorer is the merged model with a fresh classification layer fitted on frozen features of
   the workers' samples (``scorer_head="fit"``: multinomial logistic regression by L-BFGS — the jigsaw
   head says nothing about classes; ``scorer_head="keep"`` keeps a supervised soup's own). The main run
   is the ``Trainer`` with ``config.strategy`` (GraNd, GradMatch, GLISTER, ...) whose first
   selection scores the scorer (``strategies.FromModel``), from a fresh initialisation;
   ``config.every`` re-selects from the training model.

A worker that raises, runs past ``worker_timeout`` seconds (checked between steps) or ends with
non-finite weights is left out of the merge with a warning naming it; with none left the run
fails. Under torchrun worker w runs on rank ``w % world``; a rank process that dies outright
stops torchrun itself (its agent ends every rank), so faults are caught inside the worker.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from datadiet import prune, runfolder
from datadiet import strategies as strategy_registry
from datadiet._dist import init as dist_init
from datadiet._dist import warn_unbalanced, world
from datadiet._seeds import derive_seed, seeded_global_rng
from datadiet.pipelines import jigsaw as jig
from datadiet.scores.scoring import eval_mode
from datadiet.soup import greedy_soup, uniform_soup
from datadiet.strategies.base import check_types, is_number
from datadiet.strategies.pretrained import FromModel
from datadiet.train import datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import RESULTS, Trainer, pool_split

TASKS, MERGES, BN, HEADS = ("jigsaw", "supervised"), ("greedy", "uniform"), ("average", "reestimate"), ("fit", "keep")
MAX_GRID = 11  # the jigsaw's permutations hold tile numbers as int8: at most 121 tiles
RANDAUGMENT_OPS, MAX_MAGNITUDE = 14, 30  # torchvision's RandAugment: 14 ops, magnitudes 0..30


@dataclass(frozen=True)
class LiptOptions:
    n_workers: int = 4
    worker_batches: int = 1  # M minibatches per worker
    worker_steps: int = 10  # K local steps
    worker_batch_size: Optional[int] = None  # of a worker minibatch; default the run's batch_size
    task: str = "jigsaw"
    grid: Optional[int] = None  # jigsaw tiles per side; default 3 from 24 px, else 2
    permutations: int = 24  # size of the fixed permutation set
    augment_ops: int = 2
    magnitude: int = 9
    density: tuple = (0.85, 0.95)
    merge: str = "greedy"
    alphas: tuple = (0.2, 0.4, 0.6, 0.8, 1.0)
    bn: str = "average"
    scorer_head: str = "fit"
    head_iters: int = 100
    worker_lr: Optional[float] = None  # default the run's lr
    worker_timeout: Optional[float] = None
    soup_samples: int = 2048  # held-out samples judging the soup

    def validate(self) -> "LiptOptions":
        def need(ok: bool, key: str, what: str):
            if not ok:
                raise ValueError(f"lipt: {key} = {getattr(self, key)!r}: must be {what}")

        check_types(self, "lipt: ")  # every option's type first: the ranges below compare numbers
        for key in ("n_workers", "worker_batches", "worker_steps", "head_iters", "soup_samples"):
            value = getattr(self, key)
            if value < 1:
                raise ValueError(f"lipt: {key} must be an int >= 1, got {value!r}")
        need(self.permutations >= 2, "permutations", "an int >= 2 (the jigsaw task's classes)")
        need(self.grid is None or 2 <= self.grid <= MAX_GRID, "grid",
             f"an int in [2, {MAX_GRID}] (tiles per side) or None (by image size)")
        for key, allowed in (("task", TASKS), ("merge", MERGES), ("bn", BN), ("scorer_head", HEADS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"lipt: {key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.scorer_head == "keep" and self.task != "supervised":
            raise ValueError("lipt: scorer_head='keep' keeps a classifier, which only task='supervised' trains; "
                             "the jigsaw head predicts permutations (use scorer_head='fit')")
        for key, kind in (("worker_batch_size", "an int"), ("worker_lr", "a number")):
            need(getattr(self, key) is None or getattr(self, key) > 0, key, f"{kind} > 0 or None (the run's own)")
        if len(self.density) != 2 or not all(is_number(d) for d in self.density):
            raise ValueError(f"lipt: density must be a pair of numbers (low, high), got {self.density!r}")
        lo, hi = self.density
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"lipt: density must be (low, high) with 0 < low <= high <= 1, got {self.density}")
        if not self.alphas or not all(is_number(a) and 0.0 < a <= 1.0 for a in self.alphas):
            raise ValueError(f"lipt: alphas must be ratios in (0, 1], got {self.alphas!r}")
        need(0 <= self.augment_ops <= RANDAUGMENT_OPS, "augment_ops", f"an int in [0, {RANDAUGMENT_OPS}] "
             "(RandAugment ops per image)")
        need(0 <= self.magnitude <= MAX_MAGNITUDE, "magnitude", f"an int in [0, {MAX_MAGNITUDE}] (RandAugment's)")
        need(self.worker_timeout is None or self.worker_timeout > 0, "worker_timeout", "> 0 seconds or None")
        return self


class WorkerTimeout(RuntimeError):
    pass


class NoWorkerLeft(RuntimeError):
    """Every worker failed, timed out or returned non-finite weights."""


def worker_subsets(n: int, workers: int, batches: int, batch_size: int, *, seed: int) -> torch.Tensor:
    """``[workers, batches, batch_size]`` disjoint positions in a pool of ``n`` (one seeded draw)."""
    need = workers * batches * batch_size
    if need > n:
        raise ValueError(f"lipt: {workers} workers × {batches} minibatches × {batch_size} = {need} samples, more "
                         f"than the pool's {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:need].view(workers, batches, batch_size)


def lipt(config: TrainConfig, options: LiptOptions = LiptOptions(), *, data: Optional[datasets.DataBundle] = None,
         log=print) -> dict:
    """Pre-trains (module docstring), selects with ``config.strategy`` from the merged scorer and
    trains (``data``: an already loaded bundle for ``config.dataset``); returns (and with
    ``config.out`` writes ``lipt.json``) accuracies, the workers' fates
    and the time breakdown (pre-training, selection, main training, total)."""
    options = options.validate()
    config = config.validate()
    strategy = _strategy(config)  # a bad strategy configuration fails before any pre-training
    if options.augment_ops:
        jig.transforms_v2()  # a missing torchvision is the run's error, not every worker's
    device = dist_init(config.device, config.dist_timeout)
    size, rank = world()
    setting = {"config": config.identity(), "options": dataclasses.asdict(options)}
    # Shared: the main run's Trainer writes its files into the same folder.
    with runfolder.result_folder(config.out, "lipt.json", ("lipt.json", *RESULTS), setting,
                                 overwrite=config.overwrite, shared=True) as saved:
        if saved is not None:
            log(f"lipt: finished earlier with the same setting in {config.out}")
            return saved
        out = _lipt(config, options, strategy, data, device, size, rank, log)
        out["setting"] = setting
        if config.out and rank == 0:
            runfolder.write_json(os.path.join(config.out, "lipt.json"), out)
        return out


def _lipt(config: TrainConfig, options: LiptOptions, strategy, data, device, size: int, rank: int, log) -> dict:
    data = data if data is not None else config.load_data()
    data.require_test("lipt", config.dataset)
    datasets.require_classification(config.dataset, "lipt (a classifier's gradients select)", data.task)
    started = time.perf_counter()  # like the Trainer's wall, from after loading the data
    pool, held_out = pool_split(len(data.train), config.val_fraction, data.unusable_train())
    if held_out.numel() == 0:
        raise ValueError(f"lipt: the merge is judged on the held-out split; config val_fraction = "
                         f"{config.val_fraction} leaves none (use val_fraction > 0)")
    batch = options.worker_batch_size or config.batch_size
    shipped = pool[worker_subsets(pool.numel(), options.n_workers, options.worker_batches, batch,
                                  seed=derive_seed(config.seed, 30))]
    coverage = shipped.numel() / pool.numel()
    if not 0.02 <= coverage <= 0.25 and rank == 0:
        warnings.warn(f"lipt: the workers get {coverage:.1%} of the pool; the paper ships 2-25%", stacklevel=2)
    grid = options.grid or jig.default_grid(data.input_shape)
    perm_set = jig.permutation_set(grid, options.permutations, seed=derive_seed(config.seed, 31)) \
        if options.task == "jigsaw" else None
    with seeded_global_rng(derive_seed(config.seed, 32)):
        theta = models.build(config.model, data.num_classes, data.input_shape, config.width)
    path = jig.head_path(theta, config.head)
    if perm_set is not None:
        theta = jig.with_head(theta, path, len(perm_set), seed=derive_seed(config.seed, 33))
    densities = prune.worker_densities(options.n_workers, *options.density, seed=derive_seed(config.seed, 34))
    job = _Job(config, options, data, device, perm_set, densities)
    warn_unbalanced("lipt worker", options.n_workers, size)
    mine = [job.run(w, theta, shipped[w]) for w in range(rank, options.n_workers, size)]
    reports = _gather(mine, size, rank)  # the one gather; rank 0 holds every worker's model
    t_workers = time.perf_counter()
    outcome = None
    if rank == 0:  # the merge and the head on rank 0 alone; every rank receives the scorer
        try:
            outcome = job.merge_and_fit(reports, theta, path, held_out, shipped, log)
        except Exception as exc:  # every rank must learn of it, or the others wait in the broadcast
            outcome = exc
    outcome = _broadcast(outcome, size)
    if isinstance(outcome, Exception):
        raise outcome
    scorer_state, merge_report, times = outcome
    scorer = jig.with_head(theta, path, data.num_classes, seed=0) if options.scorer_head == "fit" \
        else copy.deepcopy(theta)
    scorer.load_state_dict(scorer_state)
    pretraining = time.perf_counter() - started
    trainer = Trainer(config, FromModel(strategy, scorer), data=data)
    summary = trainer.fit()
    selection = summary["time"]["selection"] + summary["time"]["scoring"]
    out = {"config": config.identity(), "options": dataclasses.asdict(options), "strategy": config.strategy,
           "test_acc": summary["test_acc"], "coverage": coverage, "shipped": int(shipped.numel()), "grid": grid,
           "permutations": 0 if perm_set is None else len(perm_set), "world_size": size,
           "workers": [{k: v for k, v in r.items() if k != "state"} for r in reports] if rank == 0 else None,
           "merge": merge_report, "time": {
               "pretraining": pretraining, "setup_and_workers": t_workers - started, "merge": times["merge"],
               "head": times["head"], "selection": selection,
               "main_training": summary["time"]["training"], "evaluation": summary["time"]["evaluation"],
               "total": pretraining + summary["wall"]},
           "selections": summary["selections"]}
    if rank == 0:
        log(f"lipt: {len(merge_report['accepted'])} of {options.n_workers} workers merged "
            f"(held-out {merge_report['score']:.4f}); {config.strategy} at {config.fraction}: test acc "
            f"{summary['test_acc']:.4f}; pre-training {pretraining:.1f}s, total {out['time']['total']:.1f}s")
    return out


def usual_pretraining(config: TrainConfig, *, data: Optional[datasets.DataBundle] = None, **strategy_params) -> dict:
    """The run LiPT is measured against: ``config.strategy`` with its own pre-training (GraNd's
    proxy models trained on the full pool: ``pretrain_epochs``, default ceil(0.2 · epochs), and
    ``repeats`` initialisations), in the same time breakdown as ``lipt``'s."""
    cfg = usual_pretraining_config(config, **strategy_params)
    summary = Trainer(cfg, data=data).fit()
    t = summary["time"]
    return {"strategy": cfg.strategy, "strategy_params": cfg.strategy_params, "test_acc": summary["test_acc"],
            "time": {"pretraining": t["pretraining"], "selection": t["selection"] + t["scoring"],
                     "main_training": t["training"], "evaluation": t["evaluation"], "total": summary["wall"]}}


def usual_pretraining_config(config: TrainConfig, **strategy_params) -> TrainConfig:
    """``usual_pretraining``'s configuration, its strategy built once to check the parameters."""
    cfg = dataclasses.replace(config, strategy_params={**config.strategy_params, **strategy_params}).validate()
    strategy_registry.make(cfg.strategy, **cfg.strategy_kwargs(strategy_registry.parameters(cfg.strategy)))
    return cfg


def _strategy(config: TrainConfig):
    """``config.strategy`` scoring the pre-trained model as it is: a score-based strategy's own
    proxy pre-training (``pretrain_epochs``) is what LiPT replaces."""
    accepted = strategy_registry.parameters(config.strategy)
    params = config.strategy_kwargs(accepted)
    if "pretrain_epochs" in accepted:
        if params.get("pretrain_epochs") or params.get("repeats", 1) != 1:
            raise ValueError("lipt: the selection scores LiPT's merged model; pretrain_epochs / repeats (the "
                             "proxy pre-training LiPT replaces) must not be set")
        params["pretrain_epochs"] = 0
    return strategy_registry.make(config.strategy, **params)


def _gather(mine: list, size: int, rank: int) -> Optional[list]:
    if size == 1:
        return mine
    everyone = [None] * size if rank == 0 else None
    torch.distributed.gather_object(mine, everyone, dst=0)
    return sorted((r for part in everyone for r in part), key=lambda r: r["worker"]) if rank == 0 else None


def _broadcast(value, size: int):
    if size == 1:
        return value
    if isinstance(value, Exception) and type(value) not in (NoWorkerLeft, ValueError, RuntimeError):
        value = RuntimeError(f"{type(value).__name__}: {value}")  # it might not pickle; its message does
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class _Job:
    """One LiPT run's shared facts; ``run`` trains a worker, ``merge`` soups, ``fit_head``."""

    def __init__(self, config, options, data, device, perm_set, densities):
        self.config, self.options, self.data, self.device = config, options, data, device
        self.perm_set, self.densities = perm_set, densities

    def _inputs(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        if self.perm_set is None:
            return x, y
        return jig.jigsaw(x, self.perm_set, generator)

    def _load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples (evaluation transforms: RandAugment replaces the random crop / flip)."""
        xs, ys = zip(*(self.data.train_eval[int(i)] for i in indices))
        return torch.stack(xs), torch.as_tensor(ys)

    def run(self, w: int, theta, indices: torch.Tensor) -> dict:
        """Worker ``w``: K steps on its M minibatches, pruned; any fault is reported, not raised."""
        start = time.perf_counter()
        report = {"worker": w, "rank": world()[1], "density": self.densities[w], "samples": int(indices.numel())}
        try:
            state, losses = _train_worker(self, w, theta, indices)
            finite = all(bool(torch.isfinite(v).all()) for v in state.values() if v.dtype.is_floating_point)
            report.update(status="ok" if finite else "non-finite", losses=losses,
                          state=state if finite else None)
            if not finite:
                report["error"] = "non-finite weights after local training"
        except WorkerTimeout as exc:
            report.update(status="timeout", error=str(exc), state=None)
        except Exception as exc:  # a worker's fault leaves it out of the soup; the run goes on
            report.update(status="failed", error=f"{type(exc).__name__}: {exc}", state=None)
        report["time"] = time.perf_counter() - start
        return report

    def heldout_score(self, held_out: torch.Tensor):
        """The merge's judge: accuracy on (a seeded sample of at most ``soup_samples`` of) the
        held-out split — of the jigsaw task with fixed per-image permutations, or of the classes."""
        g = torch.Generator().manual_seed(derive_seed(self.config.seed, 36))
        chosen = held_out[torch.randperm(held_out.numel(), generator=g)[:self.options.soup_samples]].sort().values
        batches = []
        for part in chosen.split(self.config.eval_batch_size):
            x, y = self._load(part)
            batches.append(self._inputs(x, y, g))

        def score(model) -> float:
            model = model.to(self.device)
            correct = total = 0
            with eval_mode(model):
                for x, y in batches:
                    correct += int((model(x.to(self.device)).argmax(1) == y.to(self.device)).sum())
                    total += y.numel()
            return correct / max(total, 1)
        return score

    def merge_and_fit(self, reports: list, theta, path: str, held_out: torch.Tensor, shipped: torch.Tensor,
                      log) -> tuple:
        """Rank 0's part: the soup, then (``scorer_head="fit"``) its fresh classification layer;
        returns the scorer's CPU state, the merge report and the two steps' seconds."""
        start = time.perf_counter()
        soup, report = self.merge(reports, theta, held_out, shipped, log)
        merged = time.perf_counter()
        if self.options.scorer_head == "fit":
            soup = self.fit_head(soup, path, shipped.flatten(), seed=derive_seed(self.config.seed, 35))
        state = {k: v.detach().cpu() for k, v in soup.state_dict().items()}
        return state, report, {"merge": merged - start, "head": time.perf_counter() - merged}

    def merge(self, reports: list, theta, held_out: torch.Tensor, shipped: torch.Tensor, log) -> tuple:
        alive = [r for r in reports if r["status"] == "ok"]
        for r in reports:
            if r["status"] != "ok":
                warnings.warn(f"lipt: worker {r['worker']} (rank {r['rank']}) left out of the soup: {r['status']} "
                              f"({r['error']})", stacklevel=3)
        if not alive:
            raise NoWorkerLeft("lipt: every worker failed, nothing to merge: " + "; ".join(
                f"worker {r['worker']}: {r['status']} ({r['error']})" for r in reports))
        score = self.heldout_score(held_out)
        modules = []
        for r in alive:
            m = copy.deepcopy(theta).to(self.device)
            m.load_state_dict(r["state"])
            modules.append(m)
        bn_loader = _ShippedImages(self, shipped.flatten()) if self.options.bn == "reestimate" else None
        if self.options.merge == "greedy":
            result = greedy_soup(modules, score, alphas=self.options.alphas, bn_loader=bn_loader, device=self.device)
            soup, best = result.soup, result.score
            accepted = [alive[i]["worker"] for i in result.accepted]
            history = [{"worker": alive[i]["worker"], "alpha": a, "score": s, "accepted": t}
                       for i, a, s, t in result.history]
        else:
            soup = uniform_soup(modules, bn_loader=bn_loader, device=self.device)
            best, accepted, history = score(soup), [r["worker"] for r in alive], []
        singles = {r["worker"]: score(m) for r, m in zip(alive, modules)}
        log(f"lipt: merged workers {accepted} ({self.options.merge}); held-out {best:.4f} (best single "
            f"{max(singles.values()):.4f})")
        return soup, {"accepted": accepted, "score": best, "single_scores": singles, "history": history,
                       "left_out": [r["worker"] for r in reports if r["status"] != "ok"]}

    def fit_head(self, model, path: str, indices: torch.Tensor, *, seed: int):
        """A fresh classification layer on the frozen merged features of the workers' samples:
        L2-regularised multinomial logistic regression by L-BFGS (``head_iters`` iterations)."""
        model = jig.with_head(model, path, self.data.num_classes, seed=seed).to(self.device)
        head = model.get_submodule(path)
        feats, labels = [], []
        hook = head.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().flatten(1)))
        try:
            with eval_mode(model):
                for part in indices.split(self.config.eval_batch_size):
                    x, y = self._load(part)
                    model(x.to(self.device))
                    labels.append(y.to(self.device))
        finally:
            hook.remove()
        h, y = torch.cat(feats).float(), torch.cat(labels)
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=self.options.head_iters,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(h), y) + 1e-4 * head.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return model


def _train_worker(job: _Job, w: int, theta, indices: torch.Tensor) -> tuple[dict, list]:
    """Worker ``w``'s local training and pruning; returns its CPU state dict and step losses."""
    cfg, opt_ = job.config, job.options
    deadline = None if opt_.worker_timeout is None else time.perf_counter() + opt_.worker_timeout
    model = copy.deepcopy(theta).to(job.device)
    model.train()
    lr = opt_.worker_lr or cfg.lr
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay) \
        if cfg.optimizer == "sgd" else torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    minibatches = [job._load(part) for part in indices]
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, 38, w))
    losses = []
    with seeded_global_rng(derive_seed(cfg.seed, 40, w)):  # dropout, stochastic depth: worker w's own draws
        for step in range(opt_.worker_steps):
            if deadline is not None and time.perf_counter() > deadline:
                raise WorkerTimeout(f"past worker_timeout = {opt_.worker_timeout}s after {step} of "
                                    f"{opt_.worker_steps} steps")
            x, y = minibatches[step % len(minibatches)]
            if opt_.augment_ops:
                x = jig.randaugment(x, num_ops=opt_.augment_ops, magnitude=opt_.magnitude,
                                    seed=derive_seed(cfg.seed, 39, w, step), normalization=job.data.normalization)
            x, y = job._inputs(x, y, g)
            loss = F.cross_entropy(model(x.to(job.device)).float(), y.to(job.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    prune.magnitude(model, job.densities[w])
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, losses



class _ShippedImages:
    """The workers' samples as the task's inputs, batch by batch, loaded afresh on every pass (BatchNorm
    re-estimation of each evaluated soup) with the same jigsaw draws, never all held at once."""

    def __init__(self, job: _Job, indices: torch.Tensor):
        self.job, self.indices = job, indices

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.job.config.seed, 37))
        for part in self.indices.split(self.job.config.eval_batch_size):
            yield self.job._inputs(*self.job._load(part), g)[0]
