"""``select_dataset``: score and select a dataset once, and write the subset for any pipeline.

The job takes a run's data and model options (``TrainConfig``) and a one-shot strategy, and
1. checks every option (strategy one-shot, a scorer given where the strategy scores) and claims
   the output folder before reading any data;
2. gets the scorer: ``weights`` (a ``datadiet train`` run folder, its ``checkpoint.pt`` or a
   ``state_dict`` file of the same architecture) or a proxy trained ``proxy_epochs`` epochs on
   the whole pool (DeepCore's separate selection run; its time is pre-training);
3. runs the strategy's selection once on the scorer, through the same ``Driver`` a training run
   uses (so ``datadiet select`` and ``datadiet train`` select identically), its scoring pass in
   shards kept on disk (``datadiet.selection.shards``);
4. writes ``subset.csv``, ``scores.npz`` and ``manifest.json`` (``datadiet.selection.files``).

Under torchrun a proxy is trained once, by DDP over the ranks; each rank scores its own shards of
the pass (no rows cross ranks); rank 0 reads them back, selects alone and writes the files
(``datadiet.selection.shards``). With ``weights`` the subset and scores are those one process
writes; a proxy trained by DDP sees world × batch_size samples a step, so it, and the subset it
scores, depend on the number of ranks.

A job killed at any point and started again with the same command continues: the proxy's weights
(``proxy.pt``, kept as the scorer of record) and the finished shards are reused, and the subset is
the same. ``overwrite`` replaces a finished selection in the folder.

The whole training split is selected from; a held-out selection split is carved out only for a
strategy that needs one (``glister``, ``gradmatch`` with ``target="val"``), as ``val_fraction``.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from typing import Any, Optional

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from datadiet import runfolder
from datadiet._dist import alone, rank0_first, world
from datadiet._dist import init as dist_init
from datadiet.selection import files
from datadiet.selection.shards import FOLDER, INDEX, ShardedScores, ShardsDone
from datadiet.strategies import STRATEGIES as REGISTRY
from datadiet.strategies import make, parameters
from datadiet.strategies.pretrained import fingerprint
from datadiet.strategies.static import ScoreBased
from datadiet.train import checkpoint, datasets, models
from datadiet.train.config import TrainConfig
from datadiet.train.driver import Driver
from datadiet.train.trainer import CHECKPOINT, Trainer, pool_split

# One-shot strategies a selection job runs; all but ``random`` score a model.
STRATEGIES = ("random", "loss", "el2n", "grand", "least_confidence", "margin", "entropy", "strata", "gradmatch",
              "glister")
_SCORE_FIELDS = ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy", "correct")
PROXY = "proxy.pt"


def select_dataset(config: TrainConfig, *, weights: Optional[str] = None, proxy_epochs: Optional[int] = None,
                   shard_size: int = 65536,
                   progress: bool = True) -> Optional[files.SelectedSubset]:
    """Selects ``config.fraction`` of ``config.dataset`` with ``config.strategy`` and writes it to
    ``config.out`` (module docstring); returns what ``files.load(config.out)`` returns (under
    torchrun: on rank 0; the other ranks return None once their part is done).
    ``shard_size``: samples per scoring shard kept on disk; ``config.score_image_size``: an image
    folder's scoring pass at this size instead of ``image_size`` (JPEGs decoded at reduced scale)."""
    config = dataclasses.replace(config, progress=progress and config.progress)
    strategy, needs_val = _check(config, weights, proxy_epochs)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or not 1 <= shard_size <= 1 << 40:
        raise ValueError(f"select: --shard-size {shard_size!r}: must be an int in [1, {1 << 40}]")
    device = dist_init(config.device, config.dist_timeout)
    folder = rank0_first(lambda: _claim(config))
    try:
        written = _run(config, device, strategy, needs_val, weights, proxy_epochs, shard_size)
    finally:
        if folder is not None:
            folder.release()
    return None if written is None else files.load(config.out)


def _claim(config: TrainConfig) -> runfolder.RunFolder:
    """Rank 0: the output folder, locked; a finished selection there refused (or with
    ``overwrite`` removed), an unfinished one of ours kept to be continued."""
    folder = runfolder.claim(config.out)
    try:
        if config.overwrite:
            runfolder.remove(config.out, (*files.FILES, PROXY))
        else:
            # an unfinished job of ours (its shard index or proxy there, no manifest) is continued;
            # subset files without them are someone else's and refused
            ours = os.path.exists(os.path.join(config.out, FOLDER, INDEX)) or os.path.exists(
                os.path.join(config.out, PROXY))
            runfolder.refuse_previous(config.out, runfolder.previous(
                config.out, (files.MANIFEST,) if ours else files.FILES))
    except BaseException:
        folder.release()
        raise
    return folder


def _check(config: TrainConfig, weights: Optional[str], proxy_epochs: Optional[int]):
    """The strategy object and whether it needs a held-out split; every refusal before any work."""
    config.validate()
    if not config.out:
        raise ValueError("select: give --out DIR, the folder the subset is written to")
    if config.resume:
        raise ValueError("select: --resume is a train option; run the same select command again instead")
    if config.strategy not in STRATEGIES:
        raise ValueError(f"select: strategy {config.strategy!r} is not one-shot; choose one of {', '.join(STRATEGIES)}")
    if config.fraction is None:
        raise ValueError("select: give --fraction, the share of the dataset to keep, in (0, 1]")
    params = config.strategy_kwargs(parameters(config.strategy))  # with --every / --warm, if given
    for key, why in (("pretrain_epochs", "use --proxy-epochs"), ("repeats", "one scorer"),
                     ("every", "a selection job selects once"), ("warm", "a selection job selects once"),
                     ("source", "scores come from a scoring pass"), ("cache", "a train option"),
                     ("pool", "a selection job scores the whole pool once")):
        if key in params:
            raise ValueError(f"select: {key} = {params[key]!r} is not used here ({why})")
    datasets.require_classification(config.dataset, "select")
    scored = config.strategy != "random"
    if weights is not None and proxy_epochs is not None:
        raise ValueError("select: give --weights or --proxy-epochs, not both")
    if scored and weights is None and proxy_epochs is None:
        raise ValueError(f"select: strategy {config.strategy!r} scores a model: give --weights PATH (a trained model) "
                         "or --proxy-epochs E (train one on the whole pool first)")
    if not scored and (weights is not None or proxy_epochs is not None):
        raise ValueError("select: strategy 'random' scores no model; drop --weights / --proxy-epochs")
    if proxy_epochs is not None and (isinstance(proxy_epochs, bool) or not isinstance(proxy_epochs, int)
                                     or proxy_epochs < 1):
        raise ValueError(f"select: --proxy-epochs {proxy_epochs!r}: must be an int >= 1")
    if weights is not None and not os.path.exists(weights):
        raise ValueError(f"select: --weights {weights!r} does not exist")
    if "every" in parameters(config.strategy):
        params["every"] = None  # one selection (the manifest records it so, not a schedule's default)
    if issubclass(REGISTRY[config.strategy], ScoreBased):
        params["pretrain_epochs"] = 0  # score the given scorer, never a proxy of its own
    strategy = make(config.strategy, **params)
    needs_val = config.strategy == "glister" or params.get("target") == "val"
    if needs_val and config.val_fraction <= 0:
        raise ValueError(f"select: strategy {config.strategy!r} needs a held-out split: give --val-fraction > 0")
    return strategy, needs_val


def _run(config: TrainConfig, device: torch.device, strategy, needs_val: bool, weights: Optional[str],
         proxy_epochs: Optional[int], shard_size: int) -> Optional[dict[str, Any]]:
    """The job after the checks; what ``files.write`` returns on rank 0, None on the others."""
    times = {"loading": 0.0, "pretraining": 0.0, "scoring": 0.0, "selection": 0.0}
    start = time.perf_counter()
    bundle = config.load_data()
    times["loading"] = time.perf_counter() - start
    val_fraction = config.val_fraction if needs_val else 0.0
    pool, held_out = pool_split(len(bundle.train), val_fraction, bundle.unusable_train())
    run = dataclasses.replace(config, val_fraction=val_fraction, out=None, overwrite=False,
                              epochs=proxy_epochs or 1)
    fingerprint_ = files.dataset_fingerprint(bundle.train, bundle.labels)
    model, model_info = _scorer(run, bundle, fingerprint_["sha256"], weights, proxy_epochs, times, config.out,
                                config.overwrite)
    size, rank = world()
    scored = datasets.scoring_view(bundle, config.dataset, config.score_image_size)  # pool and held-out alike
    driver = Driver(strategy, model.to(device), Subset(bundle.train, pool.tolist()), bundle.labels[pool],
                    num_classes=bundle.num_classes, epochs=1, batch_size=config.batch_size, seed=config.seed,
                    lr=config.lr, device=device, workers=config.workers,
                    val_set=Subset(scored, held_out.tolist()) if held_out.numel() else None,
                    score_set=Subset(scored, pool.tolist()),
                    head=config.head, progress=_bar(config) if rank == 0 else None,
                    score_batch_size=config.eval_batch_size, channels_last=config.channels_last,
                    autocast_dtype=config.autocast_dtype, features_dtype=config.features_dtype,
                    run=run.identity())
    setting = {"dataset": fingerprint_["sha256"], "pool": int(pool.numel()), "model": model_info["fingerprint"],
               "strategy": strategy.describe(), "seed": config.seed, "image_size": config.image_size,
               "shard_size": shard_size, "amp": config.amp, "head": config.head, "channels_last": config.channels_last,
               "eval_batch_size": config.eval_batch_size, "device": device.type,
               "score_image_size": config.score_image_size,
               **({} if config.score_features == "float32" else {"score_features": config.score_features})}
    sharded = ShardedScores(config.out, setting, shard_size, driver.score, driver.score_shards, int(pool.numel()),
                            device, overwrite=config.overwrite, rank=rank, world=size)
    tables = []

    def recorded(split: str = "train", **kw):
        table = sharded(split=split, **kw)
        if split == "train":  # the scores scores.npz keeps, not the features or errors
            tables.append({name: getattr(table, name) for name in _SCORE_FIELDS})
        return table

    strategy.context.score = recorded
    began = time.perf_counter()
    try:
        with alone():  # rank 0 selects on its own once the ranks' shards are on disk
            selection = strategy.select(0)
    except ShardsDone:
        return None  # ranks other than 0: their shards are written
    if rank != 0:
        return None  # a selection without a scoring pass (random): rank 0 writes it
    times["scoring"] = sharded.wall
    times["selection"] = time.perf_counter() - began - sharded.wall
    local = selection.indices.long().cpu()
    chosen = pool[local]  # dataset indices
    w = selection.weights if selection.weights is not None else torch.ones(local.numel())
    scores = {}
    if tables:
        table, full = tables[-1], len(bundle.train)
        for name in _SCORE_FIELDS:  # over the whole split: held-out or skipped samples are NaN
            values = torch.full((full,), float("nan"))
            values[pool] = table[name].float().cpu()
            scores[name] = values
    manifest = {
        "dataset": {"spec": config.dataset, "image_size": config.image_size,
                    "score_image_size": config.score_image_size, **fingerprint_},
        "model": model_info,
        "strategy": {"name": config.strategy, "params": strategy_params(strategy), "fraction": config.fraction,
                     "seed": config.seed, "describe": strategy.describe()},
        "pool": {"samples": int(pool.numel()), "held_out": int(held_out.numel()),
                 "skipped": [r["index"] for r in bundle.skipped if r["split"] == "train"]},
        "times": times,
        "shards": {"size": shard_size, "scored": sharded.scored, "reused": sharded.reused, "ranks": size},
        "scoring_samples_per_s": sharded.scored_samples / sharded.train_wall
        if sharded.train_wall > 0 and sharded.scored else None,  # shards read back took no scoring time
        "memory": _peak_memory(device),
        "versions": _versions(),
    }
    written = files.write(config.out, indices=chosen, weights=w.float().cpu(), labels=bundle.labels[chosen],
                          ids=files.sample_ids(bundle.train, chosen.tolist()), scores=scores, manifest=manifest)
    sharded.remove()
    return written


def default_workers(dataset: str) -> int:
    """``datadiet select``'s loader workers when ``--workers`` is not given: for an image folder
    (a JPEG decoded per sample) the CPUs this process may use, shared among torchrun's processes on
    this machine, up to 16; for data held in memory as tensors (digits, CIFAR-10, features) 0, as a
    worker would only copy rows."""
    if not dataset.startswith("imagefolder:"):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))


def _bar(config: TrainConfig):
    """A tqdm over the scoring batches counting samples (so its rate is samples/s) when stderr is a
    terminal; None (no bar) otherwise."""
    if not (config.progress and sys.stderr.isatty()):
        return None
    return lambda batches, **kw: tqdm(batches, desc="scoring", unit="sample", unit_scale=config.eval_batch_size,
                                      leave=False, **kw)


def strategy_params(strategy) -> dict[str, Any]:
    """The strategy's constructor parameters as JSON values."""
    if not dataclasses.is_dataclass(strategy):
        return {}
    out = {}
    for f in dataclasses.fields(strategy):
        if f.init:
            value = getattr(strategy, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return runfolder.finite(out)


def _scorer(run: TrainConfig, bundle, dataset_sha256: str, weights: Optional[str], proxy_epochs: Optional[int],
            times: dict, folder: str, overwrite: bool):
    """The model the strategy scores and what identifies it in the manifest. A proxy is trained
    once and kept in ``folder/proxy.pt``; a later run of the same job reads it back."""
    info: dict[str, Any] = {"name": run.model, "width": run.width}
    if proxy_epochs:
        proxy_config = dataclasses.replace(run, strategy="full", fraction=None, strategy_params={})
        identity = {**proxy_config.identity(), "dataset_sha256": dataset_sha256}
        path = os.path.join(folder, PROXY)
        # rank 0 decides and hands its reading to the others, so every rank trains (DDP) or none does
        saved = rank0_first(lambda: _saved_proxy(path, identity, overwrite), share=lambda state: state)
        began = time.perf_counter()
        trainer = Trainer(proxy_config, data=bundle)
        if saved is None:
            trainer.fit()  # under torchrun one DDP run over all ranks; its weights are the same on each
            if world()[1] == 0:
                checkpoint.save(path, {"model": trainer.model.state_dict()}, identity)
        else:
            trainer.model.load_state_dict(saved)
        times["pretraining"] = time.perf_counter() - began
        model = trainer.model
        info.update(source="proxy", proxy_epochs=proxy_epochs, reused=saved is not None, path=PROXY)
    else:
        torch.manual_seed(run.seed)
        model = models.build(run.model, bundle.num_classes, bundle.input_shape, run.width)
        if weights is not None:
            model.load_state_dict(_weights(weights, run.model, model))
            info.update(source="weights", path=os.path.abspath(weights))
        else:
            info.update(source="none")
    info["fingerprint"] = fingerprint(model)  # a digest of every parameter and buffer
    return model, info


def _saved_proxy(path: str, identity: dict, overwrite: bool) -> Optional[dict]:
    """The weights of an earlier run's proxy of the same configuration, or None (none saved, or
    ``overwrite``); one of another configuration is refused."""
    if not os.path.isfile(path) or overwrite:
        return None
    try:
        return checkpoint.load(path, identity)["model"]
    except checkpoint.CheckpointError as exc:
        raise ValueError(f"select: {path} is the proxy of another selection ({exc}); use --overwrite to start "
                         "over") from None


def _weights(path: str, name: str, model: torch.nn.Module) -> dict:
    """A state dict from a run folder, a datadiet checkpoint or a plain ``state_dict`` file, checked
    against ``model`` (every key and shape) with a one-line error naming the first differences."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
        if not os.path.isfile(path):
            raise ValueError(f"select: --weights {os.path.dirname(path)!r}: a folder without {CHECKPOINT} "
                             "(not a datadiet train run)")
    with open(path, "rb") as f:
        head = f.read(len(checkpoint.MAGIC))
    if head == checkpoint.MAGIC:
        state = checkpoint.load(path)["model"]
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
            raise ValueError(f"select: --weights {path!r}: not a state_dict file torch can read with "
                             f"weights_only=True ({type(exc).__name__})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"select: --weights {path!r}: holds no state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise ValueError(f"select: --weights {path!r} are not weights of model {name!r} for this dataset: "
                         + "; ".join(parts))
    return state


def _peak_memory(device: torch.device) -> dict[str, Optional[int]]:
    """This process's peak resident host memory so far and, on CUDA, the peak device memory
    allocated by torch, in bytes (None where the platform does not say)."""
    try:
        import resource

        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except ImportError:  # not on Windows
        host = None
    return {"host_peak_bytes": host,
            "device_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def _versions() -> dict[str, str]:
    import datadiet

    return {"datadiet": datadiet.__version__, "torch": torch.__version__, "python": platform.python_version()}
