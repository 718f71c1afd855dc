"""Run under torchrun (or alone) by tests/test_lipt.py: a tiny LiPT run on digits in which worker 1
raises and worker 2 returns NaN weights (both injected around the real worker training); writes
lipt.json to argv[1]."""

import sys

import torch

from datadiet.pipelines import LiptOptions, lipt
from datadiet.pipelines import lightweight_pretraining as module
from datadiet.train.config import TrainConfig

real = module._train_worker


def faulty(job, w, theta, indices):
    if w == 1:
        raise RuntimeError("injected fault in worker 1")
    state, losses = real(job, w, theta, indices)
    if w == 2:
        state = {k: torch.full_like(v, float("nan")) if v.dtype.is_floating_point else v for k, v in state.items()}
    return state, losses


if __name__ == "__main__":
    module._train_worker = faulty
    config = TrainConfig(strategy="grand", fraction=0.2, epochs=2, batch_size=32, progress=False, out=sys.argv[1])
    lipt(config, LiptOptions(n_workers=4, worker_steps=2, worker_batch_size=16, permutations=12))
