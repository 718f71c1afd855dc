"""InfoBatch's claim in miniature: how many of the full run's forward/backward passes does it save,
and at what accuracy, against full data and against a random subset re-drawn every epoch at the
same average size? Samples trained are counted by the loop; the saving is 1 − samples / full's."""

from __future__ import annotations

import dataclasses

from datadiet.reproduce._report import mean_std, write
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

CLAIM = "infobatch"


def run(config: TrainConfig, *, prunes=(0.3, 0.5, 0.7), anneal: float = 0.125, seeds=(0, 1, 2),
        out: str = "reproduce_out", log=print) -> list[dict]:
    rows = []
    full = {seed: Trainer(dataclasses.replace(config, strategy="full", fraction=None, every=None, seed=seed, out=None,
                                              strategy_params={})).fit() for seed in seeds}
    full_acc = mean_std([s["test_acc"] for s in full.values()])
    for prune in prunes:
        accs, saved, random_accs = [], [], []
        for seed in seeds:
            s = Trainer(dataclasses.replace(config, strategy="infobatch", fraction=None, every=None, seed=seed,
                                            out=None, strategy_params={"prune": prune, "anneal": anneal})).fit()
            accs.append(s["test_acc"])
            share = s["samples"] / full[seed]["samples"]
            saved.append(1.0 - share)
            r = Trainer(dataclasses.replace(config, strategy="random_online", fraction=share, every=1, seed=seed,
                                            out=None, strategy_params={})).fit()
            random_accs.append(r["test_acc"])
        row = {"fraction": prune, "anneal": anneal, "seeds": len(seeds)}
        row["infobatch_mean"], row["infobatch_std"] = mean_std(accs)
        row["full_mean"], row["full_std"] = full_acc
        row["random_online_mean"], row["random_online_std"] = mean_std(random_accs)
        row["saved_mean"], row["saved_std"] = mean_std(saved)
        rows.append(row)
        log(f"  prune {prune}: saved {row['saved_mean']:.1%} of the passes; infobatch {row['infobatch_mean']:.4f} ± "
            f"{row['infobatch_std']:.4f}, random at that size {row['random_online_mean']:.4f}, full "
            f"{row['full_mean']:.4f}")
    write(out, CLAIM, {"config": config.identity()}, rows,
          [("infobatch", "InfoBatch"), ("random_online", "random, same samples"), ("full", "full data")],
          "test accuracy (mean ± std over seeds)", xlabel="prune ratio r (%)")
    return rows
