"""Run under torchrun by tests/test_ensemble.py: seed 000's ensemble with one member per rank;
each rank saves the members it trained and the merged state to argv[1]/rank<r>.pt."""

import os
import sys

import torch

from datadiet.pipelines import difficulty_ensembles as module
from datadiet.train.config import TrainConfig

real = module.mean_across_ranks


def recording(models, template, n_models):
    merged = real(models, template, n_models)
    rank = torch.distributed.get_rank()
    torch.save({"members": [m.state_dict() for m in models], "merged": merged},
               os.path.join(sys.argv[1], f"rank{rank}.pt"))
    return merged


if __name__ == "__main__":
    module.mean_across_ranks = recording
    os.makedirs(sys.argv[1], exist_ok=True)
    module.ensemble(TrainConfig(model="cnn", epochs=4, fraction=0.3, progress=False, out=sys.argv[1]), phases=1,
                    n_models=3, warmup_epochs=0, log=lambda *a: None)
