"""Run under torchrun by test_distributed.py: a Driver with Selective-Backprop (its loss history
is per rank) trains one epoch under 2 gloo ranks; Driver.checkpoint_state gathers every rank's
strategy state, rank 0 alone writes it (as Lightning and accelerate do), and a fresh Driver on
each rank restores its own. Each rank saves what it had and what it restored."""

import sys

import torch
import torch.nn.functional as F

from datadiet import _dist, strategies
from datadiet.train import datasets, models
from datadiet.train.driver import Driver

_dist.init("cpu", timeout=120)
rank = torch.distributed.get_rank()
out = sys.argv[1]
bundle = datasets.load("digits")
torch.manual_seed(0)
model = models.build("mlp", 10, (1, 8, 8))


def driver():
    strategy = strategies.make("selective_backprop", rule="jiang", keep=0.5, start=0.0, end=1.0)
    return Driver(strategy, model, bundle.train, bundle.labels, num_classes=10, epochs=2, batch_size=64, seed=0)


first = driver()
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for x, y, i, w in first.batches(0):
    first.loss(F.cross_entropy(model(x), y, reduction="none"), i, w).backward()
    opt.step()
    opt.zero_grad()
state = first.checkpoint_state()
if rank == 0:
    torch.save(state, f"{out}/state.pt")
torch.distributed.barrier()
second = driver()
second.load_checkpoint_state(torch.load(f"{out}/state.pt", weights_only=False))
torch.save({"had": first.strategy.state_dict(), "restored": second.strategy.state_dict(),
            "next_epoch": second.next_epoch}, f"{out}/rank{rank}.pt")
