"""What every reproduction writes: ``CLAIM.json`` (the setting and the rows), ``CLAIM.csv`` (both
atomically, non-finite numbers as empty / null) and a plot of mean ± std over seeds against the
subset fraction."""

from __future__ import annotations

import os
import statistics

from datadiet import runfolder


def mean_std(values: list) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write(out: str, claim: str, setting: dict, rows: list[dict], series: list[tuple[str, str]], ylabel: str,
          plot=None, xlabel: str = "subset fraction (%)") -> None:
    """``series``: (row key prefix with ``_mean`` / ``_std`` columns, legend label) to plot against
    the rows' ``fraction``; ``plot(path)`` draws a claim's own figure instead. The CSV has every
    key any row has."""
    runfolder.write_json(os.path.join(out, f"{claim}.json"), {"claim": claim, **setting, "rows": rows})
    runfolder.write_csv(os.path.join(out, f"{claim}.csv"), rows)
    path = os.path.join(out, f"{claim}.png")
    plot(path) if plot is not None else _plot(rows, path, series, ylabel, xlabel)


def _plot(rows: list[dict], path: str, series, ylabel: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["fraction"] * 100 for r in rows]
    for key, label in series:
        ax.errorbar(xs, [r[f"{key}_mean"] for r in rows], yerr=[r[f"{key}_std"] for r in rows], marker="o",
                    capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
