"""The AdaSelection paper, Tables 3–4 in miniature: does AdaSelection rank best on average against each of its
candidate methods used alone, over sampling rates 0.1–0.5, on a classification task and on a
regression task? Classification: the ``Trainer`` on the embedded digits with
``adaselection`` (each candidate alone is ``methods=(m,)``). Regression: the loop is
classification-only, so a linear model on scikit-learn's diabetes is trained by a plain loop over
``datadiet.select.AdaSelector`` with the squared error (AdaBoost.R2, √ℓ as the gradient norm).
Lower rank is better; ties share the mean rank. The method weights' trajectory of the first seed
at the middle rate is plotted."""

from __future__ import annotations

import dataclasses
import statistics

import torch

from datadiet.reproduce._report import mean_std, write
from datadiet.select.adaselection import METHODS, AdaSelector
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

CLAIM = "adaselection-ranks"
COMBINED = ("big_loss", "small_loss", "uniform")  # one of the paper's combinations


def _classification(config: TrainConfig, methods: tuple, rate: float, seed: int, params: dict) -> tuple[float, list]:
    cfg = dataclasses.replace(config, strategy="adaselection", fraction=None, seed=seed, out=None,
                              strategy_params={**params, "methods": methods, "keep": rate})
    trainer = Trainer(cfg)
    summary = trainer.fit()
    return summary["test_acc"], [r["strategy"]["method_weights"] for r in trainer.history]


def _regression(methods: tuple, rate: float, seed: int, params: dict, epochs: int) -> float:
    """Test MSE (standardised target) of a linear model on diabetes trained with AdaSelection."""
    from sklearn.datasets import load_diabetes

    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    test = torch.arange(len(y)) % 5 == 0
    xs, ys = x[~test], y[~test]
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        model.weight.normal_(0, 0.1, generator=g)
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    accepted = ("eta", "tau", "lam", "ema", "delta", "draw")  # the strategy's own keys (start) have no loop here
    selector = AdaSelector(methods, keep=rate, seed=seed, **{k: v for k, v in params.items() if k in accepted})
    for epoch in range(epochs):
        for batch in torch.randperm(len(ys), generator=g).split(32):
            with torch.no_grad():
                losses = (model(xs[batch]).squeeze(1) - ys[batch]) ** 2
            kept = batch[selector.select(losses, epoch / epochs)]
            loss = ((model(xs[kept]).squeeze(1) - ys[kept]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(((model(x[test]).squeeze(1) - y[test]) ** 2).mean())


def _ranks(values: dict, higher_is_better: bool) -> dict:
    ordered = sorted(values, key=lambda k: -values[k] if higher_is_better else values[k])
    out = {}
    for k in ordered:
        tied = [j for j in ordered if values[j] == values[k]]
        out[k] = statistics.mean(ordered.index(j) + 1 for j in tied)
    return out


def run(config: TrainConfig, *, rates=(0.1, 0.2, 0.3, 0.5), seeds=(0, 1, 2), params: dict = None,
        out: str = "reproduce_out", log=print) -> list[dict]:
    params = dict(params or {"lam": 0.5})
    candidates = {m: (m,) for m in METHODS}
    candidates["adaselection"] = COMBINED
    rows, trajectory = [], None
    for task in ("classification", "regression"):
        ranks = {name: [] for name in candidates}
        for rate in rates:
            row = {"task": task, "fraction": rate, "seeds": len(seeds)}
            for name, methods in candidates.items():
                values = []
                for seed in seeds:
                    if task == "classification":
                        acc, weights = _classification(config, methods, rate, seed, params)
                        values.append(acc)
                        if name == "adaselection" and seed == seeds[0] and rate == rates[len(rates) // 2]:
                            trajectory = weights
                    else:
                        values.append(_regression(methods, rate, seed, params, config.epochs))
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
            for name, rank in _ranks({n: row[f"{n}_mean"] for n in candidates}, task == "classification").items():
                row[f"{name}_rank"] = rank
                ranks[name].append(rank)
            rows.append(row)
            log(f"  {task} rate {rate}: " + ", ".join(f"{n} {row[n + '_mean']:.4f} (#{row[n + '_rank']:g})"
                                                     for n in candidates))
        log(f"  {task} average rank: " + ", ".join(f"{n} {statistics.mean(r):.2f}" for n, r in ranks.items()))
        for name, r in ranks.items():
            rows.append({"task": task, "fraction": "average rank", "method": name, "rank": statistics.mean(r)})
    curves = [r for r in rows if isinstance(r["fraction"], float)]
    write(out, CLAIM, {"config": config.identity(), "params": params, "combined": list(COMBINED)}, rows, [], "",
          plot=lambda path: _plot(curves, candidates, trajectory, path))
    return rows


def _plot(rows: list, candidates: dict, trajectory: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, task, label in ((axes[0], "classification", "test accuracy"), (axes[1], "regression", "test MSE")):
        part = [r for r in rows if r["task"] == task]
        for name in candidates:
            ax.errorbar([r["fraction"] for r in part], [r[f"{name}_mean"] for r in part],
                        yerr=[r[f"{name}_std"] for r in part], marker="o", capsize=2, label=name,
                        linewidth=2.5 if name == "adaselection" else 1)
        ax.set_xlabel("sampling rate")
        ax.set_ylabel(label)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if trajectory:
        for name in trajectory[0]:
            axes[2].plot([w[name] for w in trajectory], label=name)
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("method weight")
        axes[2].set_title("AdaSelection's method weights (classification)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
