"""Run under torchrun by test_distributed.py: a Trainer's one-shot proxy (``proxy_scores``) under
2 gloo ranks, trained by DDP, against the same proxy trained by each rank alone (``alone()``: the
whole pool, no communication); rank 0 saves both score tables and both ranks' DDP table."""

import sys

import torch

from datadiet import _dist
from datadiet.train.config import TrainConfig
from datadiet.train.trainer import Trainer

trainer = Trainer(TrainConfig(strategy="el2n", fraction=0.3, epochs=2, progress=False, device="cpu",
                              dist_timeout=120))
ddp = trainer.proxy_scores(1, 0).el2n
with _dist.alone():
    local = trainer.proxy_scores(1, 0).el2n
both = [torch.zeros_like(ddp) for _ in range(2)]
torch.distributed.all_gather(both, ddp)
if torch.distributed.get_rank() == 0:
    torch.save({"ddp": both, "local": local}, sys.argv[1])
