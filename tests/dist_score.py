"""Run under torchrun by test_distributed.py: scores the digits pool with a seeded model under a
gloo process group (each rank its shard, gathered), and GraNd over every layer averaged over two
initialisations trained one epoch (scores.grand: the same scoring pass); rank 0 saves both."""

import sys

import torch

from datadiet import _dist
from datadiet.scores import grand, score_dataset
from datadiet.train import datasets, models
from datadiet.train.data import IndexedDataset

_dist.init("cpu", timeout=120)  # gloo, left at exit once gloo's threads are done (_dist._leave)
bundle = datasets.load("digits")
torch.manual_seed(0)
model = models.build("mlp", 10, (1, 8, 8))
table = score_dataset(model, IndexedDataset(bundle.train), features=True, errors=True, batch_size=100)
subset = torch.utils.data.Subset(bundle.train, range(150))
repeated = grand(lambda: models.build("mlp", 10, (1, 8, 8)), subset, inits=2, epochs=1, seed=3, batch_size=32)
if torch.distributed.get_rank() == 0:
    torch.save({**vars(table), "__grand__": repeated.per_init}, sys.argv[1])
