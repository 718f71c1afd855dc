"""Seed 000, Table 2's shape: does ensembling on difficulty subsets beat continuing on the base
subset, and most at small fractions (the paper: 18.1 → 38.6 at 1% of ImageNet)? Runs
``datadiet.pipelines.ensemble`` with and without the ensemble at each fraction and seed on the
same data, model and budget, and reports the test accuracies it observes."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics

from datadiet.pipelines import ensemble
from datadiet.train.config import TrainConfig

CLAIM = "ensemble-fractions"


def run(config: TrainConfig, *, fractions=(0.01, 0.05, 0.1, 0.3), seeds=(0, 1, 2), phases: int = 2,
        n_models: int = 3, warmup_epochs: int = 5, out: str = "reproduce_out", log=print) -> list[dict]:
    rows = []
    for fraction in fractions:
        accs = {True: [], False: []}
        for seed in seeds:
            for flag in (True, False):
                cfg = dataclasses.replace(config, fraction=fraction, seed=seed, out=None)
                s = ensemble(cfg, phases=phases, n_models=n_models, warmup_epochs=warmup_epochs, ensemble=flag,
                             log=lambda *a: None)
                accs[flag].append(s["test_acc"])
        row = {"fraction": fraction, "seeds": len(seeds)}
        for flag, name in ((True, "ensemble"), (False, "no_ensemble")):
            row[f"{name}_mean"] = statistics.mean(accs[flag])
            row[f"{name}_std"] = statistics.stdev(accs[flag]) if len(seeds) > 1 else 0.0
        row["gain"] = row["ensemble_mean"] - row["no_ensemble_mean"]
        rows.append(row)
        log(f"  fraction {fraction:<5}: ensemble {row['ensemble_mean']:.4f} ± {row['ensemble_std']:.4f}, "
            f"no ensemble {row['no_ensemble_mean']:.4f} ± {row['no_ensemble_std']:.4f}, gain {row['gain']:+.4f}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{CLAIM}.json"), "w") as f:
        json.dump({"claim": CLAIM, "config": config.identity(), "phases": phases, "n_models": n_models,
                   "warmup_epochs": warmup_epochs, "rows": rows}, f, indent=1)
    with open(os.path.join(out, f"{CLAIM}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, os.path.join(out, f"{CLAIM}.png"))
    return rows


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["fraction"] * 100 for r in rows]
    for name, label in (("ensemble", "ensemble on difficulty subsets"), ("no_ensemble", "no ensemble")):
        ax.errorbar(xs, [r[f"{name}_mean"] for r in rows], yerr=[r[f"{name}_std"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("subset fraction (%)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
