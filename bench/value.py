"""Is selection worth it? One run of ``datadiet compare``'s table on two tasks, with the selection
guard and candidate pools on and off, against "full data, trained less".

Tasks (``--tasks``): ``digits`` — ``digits:x8`` (11,504 8-pixel digits: the 1,438 training images
and 7 seeded noisy copies each) with the built-in CNN; ``cifar`` — a generated CIFAR-shaped
dataset (3 × 32 × 32, 10 classes: a class colour and grating under per-image phase, colour jitter
and pixel noise, ``--cifar-images`` training images) written in CIFAR-10's folder format and read
by ``--dataset cifar10:PATH`` with its crops and flips, the CNN again.

Per task, every seed of ``--seeds`` trains (``--epochs`` epochs, fraction ``--fraction``):

- ``full``, its equal-budget baseline ``full@f`` (all the data for round(f · epochs) epochs) and
  ``random_online`` (a fresh random subset every epoch);
- ``gradmatch`` every ``--every`` epochs without the guard (``max_selection_share = 0``), with it
  (``--share``), and with it and a candidate pool (``pool = --pool``);
- ``el2n`` and ``loss`` re-scored every ``--every`` epochs by a scoring pass of the run's own
  model, with the guard; and ``loss`` from the losses training already computed
  (``source = "training"``: each sample's loss when last trained, no pass), against the pass.

Reported per row as ``compare`` does — test accuracy ± std over seeds, wall (evaluations
excluded), selection share (selection + scoring + pre-training over training time), selection
rounds, time to full data's accuracy minus ``--target-drop``, accuracy at the equal-budget
baseline's wall time and the difference (``*``: not above it). ``--out`` keeps every run's
``compare.json`` (curves); a rerun with the same folder reuses finished runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import statistics
import tempfile

import numpy as np

from datadiet.train import compare
from datadiet.train.config import TrainConfig

TASKS = ("digits", "cifar")


def add_arguments(p) -> None:
    p.add_argument("--tasks", default=",".join(TASKS), help=f"any of {', '.join(TASKS)}")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--every", type=int, default=5, help="gradmatch / el2n re-selection interval")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--share", type=float, default=0.1, help="the guard's max_selection_share")
    p.add_argument("--pool", type=float, default=2.0,
                   help="candidates per round, a multiple of the budget (below 1 / fraction, or it is the whole pool)")
    p.add_argument("--digits", default="digits:x8", help="the digits task's dataset (digits: the 1,438 images once)")
    p.add_argument("--cifar-images", type=int, default=5000, help="training images of the generated task")
    p.add_argument("--target-drop", type=float, default=0.01)
    p.add_argument("--out", default=None, help="keep every run's results here (default: a temporary folder)")


# (label, strategy, strategy parameters, max_selection_share or None for --share)
def variants(args) -> list[tuple]:
    every = {"every": args.every}
    return [("gradmatch (no guard)", "gradmatch", every, 0.0),
            ("gradmatch", "gradmatch", every, None),
            (f"gradmatch pool={args.pool:g}", "gradmatch", {**every, "pool": args.pool}, None),
            ("el2n", "el2n", {**every, "pretrain_epochs": 0}, None),
            ("loss (scoring pass)", "loss", {**every, "pretrain_epochs": 0}, None),
            ("loss (training losses)", "loss", {**every, "source": "training"}, None)]


def cifar_like(root: str, images: int, seed: int = 0) -> str:
    """A CIFAR-10-format folder of generated 32-pixel images (``images`` for training in 5 batches,
    ``images // 5`` for testing): class c has a mean colour and a grating of its own frequency
    and orientation; each image a random phase, colour jitter and pixel noise."""
    folder = os.path.join(root, "cifar-10-batches-py")
    if os.path.isfile(os.path.join(folder, "batches.meta")):
        return root
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.3, 0.7, (10, 3))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0

    def batch(count):
        labels = rng.integers(0, 10, count)
        out = np.empty((count, 3, 32, 32), dtype=np.float64)
        for i, c in enumerate(labels):
            angle = math.pi * (c % 5) / 5
            wave = np.sin(2 * math.pi * (2 + c // 5 * 2) * (xx * math.cos(angle) + yy * math.sin(angle))
                          + rng.uniform(0, 2 * math.pi))
            jitter = colours[c] + rng.normal(0, 0.08, 3)
            out[i] = jitter[:, None, None] + 0.15 * wave + rng.normal(0, 0.2, (3, 32, 32))
        data = (out.clip(0, 1) * 255).astype(np.uint8).reshape(count, 3072)
        return {"data": data, "labels": [int(c) for c in labels]}

    for i in range(1, 6):
        _dump(os.path.join(folder, f"data_batch_{i}"), batch(images // 5))
    _dump(os.path.join(folder, "test_batch"), batch(images // 5))
    _dump(os.path.join(folder, "batches.meta"), {"label_names": [f"class{c}" for c in range(10)]})
    return root


def _dump(path: str, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)  # our own generated arrays; read back by datadiet's code-free reader


def _base(task: str, args, root: str) -> TrainConfig:
    if task == "digits":
        dataset = args.digits
    else:
        dataset = f"cifar10:{cifar_like(os.path.join(root, 'cifar-like'), args.cifar_images)}"
    return TrainConfig(dataset=dataset, model="cnn", epochs=args.epochs, device=str(args.device), progress=False,
                       val_fraction=0.0, max_selection_share=args.share)


def _runs(folder: str) -> list[dict]:
    with open(os.path.join(folder, "compare.json"), encoding="utf-8") as f:
        return json.load(f)["runs"]


def run(args) -> list[dict]:
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"bench value: --tasks: unknown {', '.join(sorted(unknown))}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    scratch = tempfile.TemporaryDirectory(prefix="datadiet-bench-value-")
    root = args.out or scratch.name
    rows = []
    for task in tasks:
        base = _base(task, args, root)
        data = base.load_data()
        # full, random_online and the equal-budget baseline full@f: the references
        out = os.path.join(root, task, "references")
        compare.run(base, ["full", "random_online"], [args.fraction], seeds, out, log=_quiet, data=data,
                    target_drop=args.target_drop)
        runs = _runs(out)
        for label, name, params, share in variants(args):
            config = dataclasses.replace(base, strategy_params=params,
                                         max_selection_share=args.share if share is None else share)
            out = os.path.join(root, task, label.replace(" ", "_").replace("(", "").replace(")", ""))
            compare.run(config, [name], [args.fraction], seeds, out, log=_quiet, data=data, baselines=False,
                        target_drop=args.target_drop)
            runs += [{**r, "strategy": label} for r in _runs(out)]
        table = compare.table(runs, args.target_drop)
        print(f"\n{task}: {base.dataset}, model {base.model}, {args.epochs} epochs, fraction {args.fraction}, "
              f"seeds {args.seeds}")
        print(compare.format_table(table))
        rows += [_row(task, r, [x for x in runs if x["strategy"] == r["strategy"]]) for r in table]
    scratch.cleanup()
    return rows


def _quiet(_line: str) -> None:
    pass


def _row(task: str, r: dict, runs: list[dict]) -> dict:
    """A harness row: the run's wall as its time, and compare's reading in the note."""
    share = statistics.mean(compare.selection_seconds(x["time"]) / max(x["time"]["training"], 1e-9) for x in runs)
    rounds = statistics.mean(x.get("rounds", 0) for x in runs)
    stretched = sorted({s["interval"] for x in runs for s in x.get("stretches", [])})
    vs = ("late" if r["late_start"] else f"{r['vs_baseline']:+.4f}") if r["baseline"] else "-"
    note = (f"acc {r['acc_mean']:.4f} ± {r['acc_std']:.4f}; selection {share:.1%} of training; rounds {rounds:g}"
            + (f" (stretched to {', '.join(map(str, stretched))} epochs)" if stretched else "")
            + f"; vs {r['baseline']} at its wall {vs}" + (" *" if r["beats_baseline"] is False else ""))
    return {"case": task, "method": r["strategy"], "seconds": r["wall_mean"], "bytes": None, "floor": None,
            "baselines": [r["baseline"]] if r["baseline"] else [], "acc_mean": r["acc_mean"], "acc_std": r["acc_std"],
            "selection_share": share, "rounds": rounds, "stretched_to": stretched,
            "time_to_target_s": r["time_to_target_s"], "acc_at_baseline_wall": r["acc_at_baseline_wall"],
            "vs_baseline": r["vs_baseline"], "beats_baseline": r["beats_baseline"], "note": note}
