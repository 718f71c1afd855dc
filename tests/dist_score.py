"""Run under torchrun by test_distributed.py: scores the digits pool with a seeded model under a
gloo process group (each rank its shard, gathered) and rank 0 saves the table."""

import sys

import torch

from datadiet.scores import score_dataset
from datadiet.train import datasets, models
from datadiet.train.data import IndexedDataset

torch.distributed.init_process_group("gloo")
bundle = datasets.load("digits")
torch.manual_seed(0)
model = models.build("mlp", 10, (1, 8, 8))
table = score_dataset(model, IndexedDataset(bundle.train), features=True, errors=True, batch_size=100)
if torch.distributed.get_rank() == 0:
    torch.save(vars(table), sys.argv[1])
torch.distributed.destroy_process_group()
