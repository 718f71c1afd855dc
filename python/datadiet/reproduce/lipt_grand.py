"""The LiPT study's claims in miniature: does LiPT's merged model make GraNd subsets better than GraNd
with its usual full-data pre-training and than random, at 5–50% (the paper: +6–13 points), at a
fraction of the pre-training time (the paper: 15×), and does the greedy merge beat merging every
worker (App. C)? Each seed and fraction runs four pipelines on the same data, model and budget:
``lipt`` (greedy), ``lipt`` with ``merge="uniform"``, ``grand`` with its own proxy pre-training
(``pretrain_epochs`` epochs on the full pool, ``repeats`` initialisations) and ``random``."""

from __future__ import annotations

import dataclasses

from datadiet.pipelines.lightweight_pretraining import LiptOptions, lipt, usual_pretraining
from datadiet.reproduce._report import mean_std, write
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

CLAIM = "lipt-grand"
RUNS = (("lipt", "GraNd from LiPT (greedy merge)"), ("lipt_uniform", "GraNd from LiPT (merge every worker)"),
        ("grand", "GraNd with full-data pre-training"), ("random", "random"))


def run(config: TrainConfig, options: LiptOptions = LiptOptions(), *, fractions=(0.05, 0.1, 0.3, 0.5),
        seeds=(0, 1, 2), grand_params: dict = None, out: str = "reproduce_out", log=print) -> list[dict]:
    grand_params = dict(grand_params or {})
    rows = []
    for fraction in fractions:
        accs = {name: [] for name, _ in RUNS}
        pre = {"lipt": [], "grand": []}
        merged = {"greedy": [], "uniform": []}
        for seed in seeds:
            cfg = dataclasses.replace(config, strategy="grand", fraction=fraction, seed=seed, out=None,
                                      strategy_params={})
            quiet = dict(log=lambda *a: None)
            for name, merge in (("lipt", "greedy"), ("lipt_uniform", "uniform")):
                result = lipt(cfg, dataclasses.replace(options, merge=merge), **quiet)
                accs[name].append(result["test_acc"])
                merged[merge].append(result["merge"]["score"])
                if merge == "greedy":
                    pre["lipt"].append(result["time"]["pretraining"])
            usual = usual_pretraining(cfg, **grand_params)
            accs["grand"].append(usual["test_acc"])
            pre["grand"].append(usual["time"]["pretraining"])
            accs["random"].append(Trainer(dataclasses.replace(cfg, strategy="random")).fit()["test_acc"])
        row = {"fraction": fraction, "seeds": len(seeds)}
        for name, _ in RUNS:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(accs[name])
        for merge in merged:
            row[f"heldout_{merge}_mean"], row[f"heldout_{merge}_std"] = mean_std(merged[merge])
        row["pretraining_lipt_s"], _ = mean_std(pre["lipt"])
        row["pretraining_grand_s"], _ = mean_std(pre["grand"])
        row["pretraining_ratio"] = row["pretraining_grand_s"] / max(row["pretraining_lipt_s"], 1e-9)
        rows.append(row)
        log(f"  fraction {fraction:<5}: " + ", ".join(f"{name} {row[name + '_mean']:.4f} ± {row[name + '_std']:.4f}"
                                                      for name, _ in RUNS)
            + f"; pre-training grand/lipt {row['pretraining_ratio']:.2f}x")
    write(out, CLAIM, {"config": config.identity(), "options": dataclasses.asdict(options),
                       "grand_params": grand_params}, rows, list(RUNS), "test accuracy (mean ± std over seeds)")
    return rows
