"""The Cached-GradMatch paper, §6.2: does Selective-Backprop speed up training an SSD detector without costing mAP?
(The paper, on COCO: it did not help.) Runs ``datadiet.pipelines.detection.train_detection`` on
the same images, model and budget at each ``keep`` fraction and seed: keep 1.0 trains on every
image, a smaller keep uses the Composer rule with the paper's schedule (SB from ``start`` to
``end`` of training, every ``interrupt``-th batch a normal one). Reports test mAP@0.5,
mAP@[.5:.95], training wall time (selection passes included, evaluation excluded) and images
back-propagated, mean ± std over seeds, one row per keep (its ``fraction``); plots mAP against
keep, and mAP@0.5 against training time per epoch (``sb-detection-curve.png``). Wall times on a
shared machine are noisy: read them together with the images back-propagated."""

from __future__ import annotations

import os

from datadiet.pipelines.detection import train_detection
from datadiet.reproduce._report import mean_std, write

CLAIM = "sb-detection"
METRICS = (("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]"), ("seconds", "training seconds"),
           ("backprop", "images back-propagated"))


def run(*, keeps=(1.0, 0.5), seeds=(0, 1, 2), start: float = 0.5, end: float = 0.9, interrupt: int = 2,
        out: str = "reproduce_out", log=print, **train) -> list[dict]:
    """``train``: any other ``train_detection`` argument (``epochs``, ``n_train``, ``image_size``,
    ``architecture``, ...), the same for every run."""
    keeps = [float(k) for k in keeps]
    if not keeps or len(set(keeps)) < len(keeps) or not all(0.0 < k <= 1.0 for k in keeps):
        raise ValueError(f"sb-detection: keeps must be distinct fractions in (0, 1], at least one, got {keeps!r}")
    if not seeds:
        raise ValueError(f"sb-detection: seeds must be non-empty, got {seeds!r}")
    for reserved in ("method", "keep", "seed", "log", "progress"):
        if reserved in train:
            raise ValueError(f"sb-detection: {reserved} is set by the reproduction, got {reserved}={train[reserved]!r}")
    schedule = {"method": "composer", "start": start, "end": end, "interrupt": interrupt}
    results = {keep: [] for keep in keeps}
    for seed in seeds:  # keeps side by side per seed, so a busy spell on the machine hits all alike
        for keep in keeps:
            sb = {**schedule, "keep": keep} if keep < 1.0 else {}
            results[keep].append(train_detection(seed=seed, progress=False, **sb, **train))
    rows, curves = [], {}
    for keep, runs in results.items():
        row = {"fraction": keep, "method": "composer" if keep < 1.0 else "none", "seeds": len(seeds)}
        values = {"map50": [r["map50"] for r in runs], "map": [r["map"] for r in runs],
                  "seconds": [r["train_seconds"] for r in runs], "backprop": [r["images_backpropagated"] for r in runs]}
        for key, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values[key])
        rows.append(row)
        curves[keep] = [[sum(r["curve"][e][k] for r in runs) / len(runs) for e in range(len(runs[0]["curve"]))]
                        for k in ("seconds", "map50")]
        log(f"  keep {keep:<5}: " + ", ".join(f"{label} {row[key + '_mean']:.4f} ± {row[key + '_std']:.4f}"
                                              for key, label in METRICS))
    base = next((r for r in rows if r["fraction"] == 1.0), None)
    for row in rows:
        row["time_vs_full"] = row["seconds_mean"] / base["seconds_mean"] if base else float("nan")
    write(out, CLAIM, {"start": start, "end": end, "interrupt": interrupt, "train": train}, rows,
          [("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]")], "test mAP (mean ± std over seeds)",
          xlabel="share of each selective batch back-propagated, keep (%)")
    _plot_curves(curves, os.path.join(out, f"{CLAIM}-curve.png"))
    return rows


def _plot_curves(curves: dict, path: str) -> None:
    """Test mAP@0.5 after each epoch against cumulative training seconds, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for keep, (seconds, map50) in curves.items():
        ax.plot(seconds, map50, marker="o", label="all images" if keep == 1.0 else f"SB, keep {keep}")
    ax.set_xlabel("training seconds (mean over seeds)")
    ax.set_ylabel("test mAP@0.5")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
