"""``datadiet compare``: every strategy × fraction × seed trained with the same options, then a
table (test accuracy mean ± std over seeds, wall time, speed-up against ``full``), CSV, JSON and a
plot of test accuracy against wall time. A strategy without a ``fraction`` (``full``,
``selective_backprop``) runs once per seed; its row's fraction is 1.0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
from typing import Optional

from datadiet import strategies
from datadiet._dist import world
from datadiet.train import datasets
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

DEFAULT_STRATEGIES = ("full", "random", "el2n", "gradmatch", "selective_backprop")


def split_params(params: dict, names: list[str]) -> dict[str, dict]:
    """``{"every": 5, "gradmatch.mode": "global"}`` → per strategy, where it takes the key."""
    out = {name: {} for name in names}
    for key, value in params.items():
        target, _, name = key.rpartition(".")
        if name == "fraction":
            raise ValueError(f"--param {key}: the fractions compared are set by --fractions")
        if target and target not in out:
            raise ValueError(f"--param {key}: {target!r} is not among the compared strategies {names}")
        takers = [s for s in ([target] if target else names) if name in strategies.parameters(s)]
        if not takers:
            raise ValueError(f"--param {key}: no compared strategy takes a parameter {name!r}")
        for s in takers:
            out[s][name] = value
    return out


def run(base: TrainConfig, names: list[str], fractions: list[float], seeds: list[int], out: str,
        log=print) -> list[dict]:
    datasets.require_classification(base.dataset, "compare (it ranks test accuracy)")
    for name in names:
        strategies.parameters(name)  # unknown names fail before anything trains
    params = split_params(base.strategy_params, names)
    runs = []
    for seed in seeds:
        for name in names:
            takes = strategies.parameters(name)
            common = {key: getattr(base, key) if key in takes else None for key in ("every", "warm")}
            for fraction in (fractions if "fraction" in takes else [1.0]):
                config = dataclasses.replace(base, strategy=name, fraction=fraction if "fraction" in takes else None,
                                             seed=seed, strategy_params=params[name], out=None, resume=None,
                                             **common)
                summary = Trainer(config).fit()
                runs.append({"strategy": name, "fraction": fraction, "seed": seed, "test_acc": summary["test_acc"],
                             "wall": summary["wall"], "samples": summary["samples"], "time": summary["time"],
                             "curve": summary["curve"]})
                log(f"  {name:>20} fraction {fraction:<5} seed {seed}: test acc {summary['test_acc']:.4f} "
                    f"in {summary['wall']:.2f} s")
    rows = table(runs)
    if world()[1] != 0:
        return rows  # under torchrun every rank trains; rank 0 writes
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"config": base.identity(), "rows": rows, "runs": runs}, f, indent=1)
    with open(os.path.join(out, "compare.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(runs, os.path.join(out, "compare.png"))
    return rows


def table(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    full = groups.get(("full", 1.0))
    full_wall = statistics.mean(r["wall"] for r in full) if full else None
    rows = []
    for (name, fraction), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        wall = statistics.mean(r["wall"] for r in rs)
        rows.append({"strategy": name, "fraction": fraction, "seeds": len(rs), "acc_mean": statistics.mean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "wall_mean": wall,
                     "selection_s": statistics.mean(_selecting(r["time"]) for r in rs),
                     "samples_mean": statistics.mean(r["samples"] for r in rs),
                     "speedup_vs_full": full_wall / wall if full_wall and wall > 0 else None})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'strategy':>20} {'fraction':>8} {'test acc':>17} {'wall s':>8} {'select s':>8} {'speed-up':>8}"]
    for r in rows:
        speed = f"{r['speedup_vs_full']:.2f}x" if r["speedup_vs_full"] else "-"
        lines.append(f"{r['strategy']:>20} {r['fraction']:>8} {r['acc_mean']:>9.4f} ± {r['acc_std']:.4f} "
                     f"{r['wall_mean']:>8.2f} {r['selection_s']:>8.2f} {speed:>8}")
    return "\n".join(lines)


def plot(runs: list[dict], path: str) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["fraction"]), []).append(r)
    for (name, fraction), rs in groups.items():
        length = min(len(r["curve"]) for r in rs)
        wall = [statistics.mean(r["curve"][e][0] for r in rs) for e in range(length)]
        acc = [statistics.mean(r["curve"][e][1] for r in rs) for e in range(length)]
        ax.plot(wall, acc, marker=".", label=name if name == "full" else f"{name} {fraction:g}")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _selecting(time: dict) -> float:
    """Seconds a run spent choosing its subsets: proxy pre-training, scoring passes, solvers."""
    return time["selection"] + time["scoring"] + time["pretraining"]
