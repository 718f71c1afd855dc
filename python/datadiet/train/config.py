"""A training run's configuration: one dataclass, filled from defaults, a TOML file and flags
(in that order of precedence, flags last), validated with errors naming the key and value.

TOML keys are the field names (``batch_size = 128``); strategy parameters go in a
``[strategy_params]`` table (``every = 5``, ``mode = "per_batch"``). ``identity()`` is the part
of the configuration a checkpoint must match to be resumed (not the output folder, device,
loader workers or progress bars).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

OPTIMIZERS = ("sgd", "adamw")
AMP = ("none", "bf16", "fp16")
# Not part of what a checkpoint must match: where and how the run executes, and when it stops.
_NOT_IDENTITY = ("out", "device", "workers", "progress", "resume", "dist_timeout", "overwrite", "nonfinite_steps")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str = "mlp"
    width: int = 0
    head: Optional[str] = None
    image_size: int = 224
    val_fraction: float = 0.1
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
    compile: bool = False
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    checkpoint_every: int = 0
    dist_timeout: float = 300.0
    out: Optional[str] = None
    resume: Optional[str] = None
    overwrite: bool = False
    nonfinite_steps: int = 1
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def need(ok: bool, key: str, what: str):
            if not ok:
                raise ValueError(f"config {key} = {getattr(self, key)!r}: {what}")

        for key in ("epochs", "batch_size", "eval_batch_size", "image_size"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key, "must be an int >= 1")
        need(isinstance(self.nonfinite_steps, int) and not isinstance(self.nonfinite_steps, bool)
             and self.nonfinite_steps >= 1, "nonfinite_steps", "must be an int >= 1 (non-finite losses in a row "
             "that stop the run)")
        for key in ("width", "warmup_steps", "workers", "checkpoint_every"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, "must be an int >= 0")
        need(self.fraction is None or (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1),
             "fraction", "must be in (0, 1]")
        need(self.every is None or (isinstance(self.every, int) and not isinstance(self.every, bool)
                                    and self.every >= 1), "every", "must be an int >= 1 (epochs between selections)")
        need(self.warm is None or 0 <= self.warm < 1, "warm", "must be in [0, 1)")
        need(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.amp in AMP, "amp", f"must be one of {AMP}")
        need(self.lr > 0, "lr", "must be > 0")
        need(0.0 <= self.final_lr <= 1.0, "final_lr", "must be in [0, 1] (a fraction of lr at the schedule's end)")
        need(self.dist_timeout > 0, "dist_timeout", "must be > 0 seconds")
        need(isinstance(self.strategy_params, dict), "strategy_params", "must be a table of strategy parameters")
        return self

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IDENTITY}

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
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path!r}: not valid TOML ({exc})") from exc
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config file {path!r}: unknown key {', '.join(map(repr, unknown))}")
    return data
