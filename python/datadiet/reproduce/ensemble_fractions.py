"""The difficulty-ensembles paper, Table 2's shape: does ensembling on difficulty subsets beat continuing on the base
subset, and most at small fractions (the paper: 18.1 → 38.6 at 1% of ImageNet)? Runs
``datadiet.pipelines.ensemble`` with and without the ensemble at each fraction and seed on the
same data, model and budget, and reports the test accuracies it observes."""

from __future__ import annotations

import dataclasses

from datadiet.pipelines import ensemble
from datadiet.reproduce._report import mean_std, write
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
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(accs[flag])
        row["gain"] = row["ensemble_mean"] - row["no_ensemble_mean"]
        rows.append(row)
        log(f"  fraction {fraction:<5}: ensemble {row['ensemble_mean']:.4f} ± {row['ensemble_std']:.4f}, "
            f"no ensemble {row['no_ensemble_mean']:.4f} ± {row['no_ensemble_std']:.4f}, gain {row['gain']:+.4f}")
    write(out, CLAIM, {"config": config.identity(), "phases": phases, "n_models": n_models,
                       "warmup_epochs": warmup_epochs}, rows,
          [("ensemble", "ensemble on difficulty subsets"), ("no_ensemble", "no ensemble")],
          "test accuracy (mean ± std over seeds)")
    return rows
