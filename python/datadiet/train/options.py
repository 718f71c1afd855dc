"""Command-line options of ``datadiet train`` / ``compare``, derived from ``TrainConfig``'s fields
(``batch_size`` → ``--batch-size``), layered: defaults < ``--config run.toml`` < flags.
``--param KEY=VALUE`` sets a strategy parameter (``compare``: ``STRATEGY.KEY=VALUE`` for one
strategy); values are read as Python literals (``5``, ``0.5``, ``True``, ``None``, ``[1, 2]``) or
else strings, and each strategy checks what it receives."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import typing

from datadiet.train.config import TrainConfig, from_toml

_HELP = {
    "dataset": "digits (default), imagefolder:PATH, cifar10:PATH or features:PATH (.npz/.pt embeddings)",
    "model": "mlp, cnn, linear, a torchvision model name or module:callable", "strategy": "selection strategy (datadiet.strategies.STRATEGIES)",
    "fraction": "subset fraction in (0, 1]", "every": "re-select every R epochs", "warm": "CORDS' kappa: "
    "fraction of the budget on full data first", "resume": "continue the run whose checkpoint is in DIR",
    "out": "folder for metrics.jsonl, summary.json, checkpoint.pt", "val_fraction": "held-out selection split "
    "(GLISTER, GradMatch target=val), carved from the training data", "checkpoint_every": "also checkpoint "
    "every N optimisation steps (0: epoch ends only)", "head": "name of the final nn.Linear (default: found)",
    "amp": "none, bf16 or fp16 (CUDA)", "batch_size": "per-rank batch size",
    "score_features": "float32 or bfloat16: the precision scoring passes keep the final layer's inputs in "
    "(GradMatch / GLISTER tables; bfloat16 halves them)",
    "score_image_size": "imagefolder: scoring passes at S pixels instead of --image-size (JPEGs decoded at "
    "reduced scale)",
    "max_selection_share": "the largest share of training time a periodic strategy's selection rounds may take: "
    "above it the re-selection interval is stretched (never below --every; 0: off)",
    "final_lr": "the cosine / one-cycle schedule's last lr, a fraction of --lr",
    "overwrite": "replace the results of a previous run in --out (without it, such a folder is refused)",
    "skip_bad_samples": "decode every image once first and leave unreadable ones out (listed in summary.json) "
    "instead of stopping at the first",
    "nonfinite_steps": "stop when this many training losses in a row are NaN or infinite (their steps are "
    "skipped)",
    "augment": "imagefolder training augmentation: imagenet (default), light, crop, none, randaugment or "
    "module:callable (image_size -> transform of PIL images)",
    "subset": "train on the subset a `datadiet select` folder records (its samples and weights; no "
    "held-out split)",
}


def add_train_options(parser: argparse.ArgumentParser, *, skip: tuple = ()) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "strategy_params":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = typing.get_args(hints[f.name])[0] if typing.get_origin(hints[f.name]) is typing.Union \
            else hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = _HELP.get(f.name, "") + f" (default {default})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text,
                                metavar="DIR" if f.name in ("out", "resume", "subset") else
                                "S" if f.name in ("score_image_size", "max_selection_share") else None)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a strategy parameter (repeatable)")
    parser.add_argument("--config", default=None, help="TOML file of options (flags override it)")


def parse_params(items: list[str]) -> dict:
    """``KEY=VALUE`` items as a dict. ``true`` / ``false`` / ``none`` (any case) are booleans and None
    as in TOML; a value that is no Python literal stays the text itself: the strategy then names
    the parameter and what it expects (``keep = 'half': must be a finite number``)."""
    out = {}
    words = {"true": True, "false": False, "none": None, "null": None}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        if text.strip().lower() in words:
            out[key.strip()] = words[text.strip().lower()]
            continue
        try:
            out[key.strip()] = ast.literal_eval(text)
        # TypeError: an unhashable set member or dict key ({[1]: 2}); MemoryError and RecursionError:
        # the parser's stack on deeply nested text
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key.strip()] = text
    return out


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    values: dict = {}
    resume = getattr(args, "resume", None)
    flags = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    if resume:
        values.update(_saved_config(resume, flags))
    if args.config:
        values.update(from_toml(args.config))
    values.update(flags)
    if resume and "out" not in flags:
        values["out"] = resume  # a resumed run writes where its checkpoint is, even if the folder moved
    params = values.get("strategy_params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"config strategy_params = {params!r}: must be a table of strategy parameters")
    params = {**params, **overrides.pop("strategy_params", {})}
    values.update(overrides)
    values["strategy_params"] = params
    return TrainConfig(**values).validate()


def _saved_config(folder: str, flags: dict) -> dict:
    """The configuration a run folder recorded, as data only: a model given there as
    ``module:callable`` (which would import code) must be given again with ``--model`` and equal."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"--resume {folder}: no config.json there (not a datadiet run folder)")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--resume {folder}: config.json cannot be read as JSON ({exc})") from exc
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {folder}: config.json holds {type(saved).__name__}, not a table of options")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"--resume {folder}: config.json has unknown option {', '.join(map(repr, unknown))}")
    for key in ("resume", "overwrite"):  # how that run was started, not what it is
        saved.pop(key, None)
    saved.setdefault("max_selection_share", 0.0)  # a run from before the guard ran without it
    model = saved.get("model")
    if isinstance(model, str) and ":" in model and flags.get("model") != model:
        raise ValueError(f"--resume {folder}: the run's model {model!r} imports code, which is never taken from a "
                         f"run folder; give it again with --model {model}")
    return saved
