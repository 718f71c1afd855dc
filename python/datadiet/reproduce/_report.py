"""What every reproduction writes: ``CLAIM.json`` (the setting and the rows), ``CLAIM.csv`` and a
plot of mean ± std over seeds against the subset fraction."""

from __future__ import annotations

import csv
import json
import os
import statistics


def mean_std(values: list) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write(out: str, claim: str, setting: dict, rows: list[dict], series: list[tuple[str, str]], ylabel: str) -> None:
    """``series``: (row key prefix with ``_mean`` / ``_std`` columns, legend label) to plot."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{claim}.json"), "w") as f:
        json.dump({"claim": claim, **setting, "rows": rows}, f, indent=1)
    with open(os.path.join(out, f"{claim}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, os.path.join(out, f"{claim}.png"), series, ylabel)


def _plot(rows: list[dict], path: str, series, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["fraction"] * 100 for r in rows]
    for key, label in series:
        ax.errorbar(xs, [r[f"{key}_mean"] for r in rows], yerr=[r[f"{key}_std"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("subset fraction (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
