"""A training run's configuration: one dataclass, filled from defaults, a TOML file and flags
(in that order of precedence, flags last), validated with errors naming the key and value.

TOML keys are the field names (``batch_size = 128``); strategy parameters go in a
``[strategy_params]`` table (``every = 5``, ``mode = "per_batch"``). ``identity()`` is the part
of the configuration a checkpoint must match to be resumed (not the output folder, device,
loader workers or progress bars).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from datadiet.strategies.base import check_types
from datadiet.train.schedules import SCHEDULES

OPTIMIZERS = ("sgd", "adamw")
AMP = ("none", "bf16", "fp16")
SCORE_FEATURES = ("float32", "bfloat16")
DEVICES = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (N in 0..127, torch's device indices)"
_DEVICE = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,2}))?")  # torch refuses leading zeros
# Bounds far beyond any real run, so that an absurd value (2**70) is refused here instead of hanging,
# exhausting memory or overflowing in the model, the loaders or the lr plan.
_AT_MOST = {"epochs": 100_000, "batch_size": 1 << 20, "eval_batch_size": 1 << 20, "image_size": 4096,
            "width": 65536, "workers": 1024}
_MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds; a timedelta of any float would overflow
# Options added after runs were written, part of a run's identity only when not at the value those
# runs had (the guard was off before max_selection_share existed: a resumed old run keeps it off).
_LATER = {"augment": None, "subset": None, "score_features": "float32", "score_image_size": None,
          "max_selection_share": 0.0}
# Not part of what a checkpoint must match: where and how the run executes, and when it stops.
_NOT_IDENTITY = ("out", "device", "workers", "progress", "resume", "dist_timeout", "overwrite", "nonfinite_steps")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str = "mlp"
    width: int = 0
    head: Optional[str] = None
    image_size: int = 224
    augment: Optional[str] = None
    val_fraction: float = 0.1
    subset: Optional[str] = None
    strategy: str = "full"
    fraction: Optional[float] = None
    every: Optional[int] = None
    warm: Optional[float] = None
    strategy_params: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 0
    final_lr: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    score_features: str = "float32"
    score_image_size: Optional[int] = None
    max_selection_share: float = 0.1
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    checkpoint_every: int = 0
    dist_timeout: float = 1800.0
    out: Optional[str] = None
    resume: Optional[str] = None
    overwrite: bool = False
    skip_bad_samples: bool = False
    nonfinite_steps: int = 1
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def need(ok: bool, key: str, what: str):
            if not ok:
                raise ValueError(f"config {key} = {getattr(self, key)!r}: {what}")

        check_types(self, "config ")  # every field's type first: the ranges below compare numbers
        for key, least in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("image_size", 1),
                           ("width", 0), ("warmup_steps", 0), ("workers", 0), ("checkpoint_every", 0)):
            value, most = getattr(self, key), _AT_MOST.get(key)
            need(least <= value and (most is None or value <= most), key,
                 f"must be an int >= {least}" if most is None else f"must be an int in [{least}, {most}]")
        need(self.score_image_size is None or 1 <= self.score_image_size <= 4096, "score_image_size",
             "must be an int in [1, 4096] or None (score at image_size)")
        need(self.score_image_size is None or self.dataset.startswith("imagefolder:"), "score_image_size",
             f"applies to imagefolder: datasets (JPEGs decoded at reduced scale); {self.dataset!r} is not one")
        from datadiet.train.datasets import task_of

        language = task_of(self.dataset) == "language"
        need(not language or self.model == "transformer" or ":" in self.model, "model",
             f"must be transformer (or module:callable) for the token sequences of {self.dataset!r}")
        need(self.model != "transformer" or language, "model",
             f"transformer is a language model: it needs a text: dataset, not {self.dataset!r}")
        need(self.score_image_size is None or self.model not in ("mlp", "linear"), "score_image_size",
             f"needs a model that takes any image size (cnn, a torchvision model); {self.model!r} has a fixed input")
        need(self.max_selection_share >= 0, "max_selection_share", "must be a number >= 0 (the largest share of "
             "training time a periodic strategy's re-selection may take before its interval is stretched; 0: off)")
        need(self.nonfinite_steps >= 1, "nonfinite_steps", "must be an int >= 1 (non-finite losses in a row that "
             "stop the run)")
        need(self.fraction is None or 0 < self.fraction <= 1, "fraction", "must be in (0, 1]")
        need(self.every is None or self.every >= 1, "every", "must be an int >= 1 (epochs between selections)")
        need(self.warm is None or 0 <= self.warm < 1, "warm", "must be in [0, 1)")
        need(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.amp in AMP, "amp", f"must be one of {AMP}")
        need(self.score_features in SCORE_FEATURES, "score_features", f"must be one of {SCORE_FEATURES}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}")
        need(self.lr > 0, "lr", "must be a finite number > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(not (self.nesterov and self.optimizer == "sgd" and self.momentum == 0), "nesterov",
             "must be false when momentum = 0 (Nesterov momentum needs a momentum)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0.0 <= self.final_lr <= 1.0, "final_lr", "must be in [0, 1] (a fraction of lr at the schedule's end)")
        need(0 < self.dist_timeout <= _MAX_TIMEOUT, "dist_timeout", f"must be in (0, {_MAX_TIMEOUT:.0f}] seconds")
        need(0 <= self.seed < 2 ** 63, "seed", "must be an int in [0, 2**63) (torch's seed range)")
        device = _DEVICE.fullmatch(self.device)
        need(device is not None and int(device.group(1) or 0) <= 127, "device", f"must be {DEVICES}")
        need(all(isinstance(k, str) for k in self.strategy_params), "strategy_params",
             "must be a table of strategy parameters (named by strings)")
        from datadiet.train.datasets import check_augment

        check_augment(self.augment, self.dataset)
        if self.subset is not None:  # the recorded subset is the selection: no strategy chooses another
            for key, default in (("strategy", "full"), ("fraction", None), ("every", None), ("warm", None),
                                 ("strategy_params", {})):
                need(getattr(self, key) == default, key, f"cannot be combined with subset = {self.subset!r} (a "
                     "selection folder fixes the samples and weights)")
        for key, hint in typing.get_type_hints(TrainConfig).items():  # TOML's lr = 1 is lr = 1.0: one identity
            if hint in (float, Optional[float]) and type(getattr(self, key)) is int:
                setattr(self, key, float(getattr(self, key)))
        return self

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        """The dtype ``amp`` names for ``torch.autocast`` (None: full precision)."""
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.amp]

    @property
    def features_dtype(self) -> torch.dtype:
        """The dtype scoring passes keep the final layer's inputs in."""
        return getattr(torch, self.score_features)

    def load_data(self):
        """``datasets.load`` of this run's dataset (``skip_bad_samples``: unreadable files listed
        and left out, found by one decoding pass on ``workers`` processes)."""
        from datadiet.train import datasets

        return datasets.load(self.dataset, self.image_size, skip_bad=self.skip_bad_samples, workers=self.workers,
                             augment=self.augment)

    def identity(self) -> dict[str, Any]:
        # options added later appear only when not at their default, so runs from before them still resume
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in _NOT_IDENTITY and not (k in _LATER and v == _LATER[k])}

    def strategy_kwargs(self, accepted: dict) -> dict[str, Any]:
        """``strategy_params`` plus ``fraction`` / ``every`` / ``warm``; one the strategy does not
        take, or one given twice, is refused (never silently dropped)."""
        out = dict(self.strategy_params)
        for key in ("fraction", "every", "warm"):
            value = getattr(self, key)
            if value is None:
                continue
            if key not in accepted:
                raise ValueError(f"config {key} = {value!r}: strategy {self.strategy!r} takes no {key} (it takes "
                                 f"{', '.join(sorted(accepted)) or 'no parameters'})")
            if key in out:
                raise ValueError(f"config {key} is given twice: {value!r} and strategy_params {out[key]!r}")
            out[key] = value
        return out


def from_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError as exc:  # Python 3.10
        raise ValueError(f"config file {path!r}: reading TOML needs Python 3.11 or newer") from exc
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"config file {path!r}: cannot be read ({exc.strerror})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path!r}: not valid TOML ({exc})") from exc
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config file {path!r}: unknown key {', '.join(map(repr, unknown))}")
    # the flags' --param values are merged into this table before TrainConfig checks it
    if not isinstance(data.get("strategy_params", {}), dict):
        raise ValueError(f"config file {path!r}: strategy_params = {data['strategy_params']!r}: must be a table "
                         "([strategy_params])")
    return data
