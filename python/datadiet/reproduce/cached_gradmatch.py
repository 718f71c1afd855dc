"""The Cached-GradMatch paper, Tables 1–3 in miniature: does replaying a GradMatch run's recorded subsets
(Cached-GradMatch) keep GradMatch's accuracy without its selection cost, when the cache was made
at one learning rate and replayed at others, or made on one architecture and replayed on another
— against GradMatch recomputed in each setting, RandomPB, a random subset re-drawn as often, and
full data? Each seed records its own cache (``gradmatch --cache``) at the base setting."""

from __future__ import annotations

import dataclasses
import os
import tempfile

from datadiet.reproduce._report import mean_std, write
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

CLAIM = "cached-gradmatch"
METHODS = ("full", "random_online", "random_pb", "gradmatch", "cached_gradmatch")


def run(config: TrainConfig, *, fraction: float = 0.1, every: int = 5, lrs=(0.02, 0.1, 0.2), replay_model: str = "cnn",
        seeds=(0, 1, 2), out: str = "reproduce_out", log=print) -> list[dict]:
    """``config`` is the recording setting (its model and lr); the replays change the lr to each of
    ``lrs`` on the same model, then the model to ``replay_model`` at the recording lr."""
    with tempfile.TemporaryDirectory(prefix="datadiet-caches-") as folder:
        rows = _compare(config, fraction, every, lrs, replay_model, seeds, folder, log)
    write(out, CLAIM, {"config": config.identity(), "lrs": list(lrs), "replay_model": replay_model}, rows, [], "",
          plot=lambda path: _plot(rows, path))
    return rows


def _compare(config, fraction, every, lrs, replay_model, seeds, folder, log) -> list[dict]:
    caches = {}
    for seed in seeds:
        caches[seed] = os.path.join(folder, f"seed{seed}.cache")
        Trainer(_config(config, "gradmatch", fraction, every, seed, {"cache": caches[seed]})).fit()
    settings = [(f"lr {lr}", dataclasses.replace(config, lr=lr)) for lr in lrs]
    settings.append((f"model {replay_model}", dataclasses.replace(config, model=replay_model)))
    rows = []
    for label, setting in settings:
        row = {"setting": label, "fraction": fraction, "every": every, "seeds": len(seeds)}
        walls = {}
        for method in METHODS:
            accs, walls[method], selecting = [], [], []
            for seed in seeds:
                params = {"cache": caches[seed]} if method == "cached_gradmatch" else {}
                s = Trainer(_config(setting, method, fraction, every, seed, params)).fit()
                accs.append(s["test_acc"])
                walls[method].append(s["wall"])
                selecting.append(s["time"]["selection"] + s["time"]["scoring"])
            row[f"{method}_mean"], row[f"{method}_std"] = mean_std(accs)
            row[f"{method}_wall"] = mean_std(walls[method])[0]
            row[f"{method}_selection_s"] = mean_std(selecting)[0]
        for method in METHODS:
            row[f"{method}_speedup"] = row["full_wall"] / max(row[f"{method}_wall"], 1e-9)
        rows.append(row)
        log(f"  {label}: " + ", ".join(f"{m} {row[m + '_mean']:.4f} ({row[m + '_speedup']:.2f}x)" for m in METHODS))
    return rows


def _config(config: TrainConfig, method: str, fraction: float, every: int, seed: int, params: dict) -> TrainConfig:
    subset = method != "full"
    return dataclasses.replace(config, strategy=method, fraction=fraction if subset else None,
                               every=every if subset else None, seed=seed, out=None, strategy_params=params)


def _plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, speed) = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(METHODS)
    for j, method in enumerate(METHODS):
        xs = [i + (j - len(METHODS) / 2) * width for i in range(len(rows))]
        acc.bar(xs, [r[f"{method}_mean"] for r in rows], width, yerr=[r[f"{method}_std"] for r in rows],
                label=method, capsize=2)
        speed.bar(xs, [r[f"{method}_speedup"] for r in rows], width, label=method)
    for ax, label in ((acc, "test accuracy (mean ± std)"), (speed, "speed-up vs full (wall)")):
        ax.set_xticks(range(len(rows)), [r["setting"] for r in rows])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    acc.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
