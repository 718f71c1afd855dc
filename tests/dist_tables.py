"""Run by test_distributed.py, under torchrun (2 or 3 gloo ranks) or as one process: where a
distributed scoring pass's rows go, and the selections GradMatch (per class, spread over the
ranks; global, solved on rank 0) and GLISTER (sharded over the ranks) make through the Driver. Each rank saves
what it holds; the test compares the ranks' selections with one process's."""

import dataclasses
import importlib
import sys
import time

import torch

from datadiet import _dist, strategies
from datadiet.scores import score_dataset
from datadiet.strategies.static import Random
from datadiet.train import datasets, models
from datadiet.train.data import IndexedDataset
from datadiet.train.driver import Driver

glister_module = importlib.import_module("datadiet.select.glister")  # the module (the package exports the function)
_dist.init("cpu", timeout=120)
size, rank = _dist.world()
out = sys.argv[1]
bundle = datasets.load("digits")
pool, held = torch.arange(0, 1100), torch.arange(1100, 1400)
train = torch.utils.data.Subset(bundle.train, pool.tolist())
torch.manual_seed(0)
model = models.build("mlp", 10, (1, 8, 8))

saved = {}
for gather in ("all", "root", "local"):
    table = score_dataset(model, IndexedDataset(train), features=True, errors=True, batch_size=100, gather=gather)
    saved[f"table/{gather}"] = None if table is None else {k: v for k, v in vars(table).items() if v is not None}

# route_rows: uneven owners (a rank may send nothing), a bool column, 2-D rows
rows = torch.arange(rank * 100, rank * 100 + 7 + 5 * rank)
owner = (rows * 7 + 3) % size if size > 1 else torch.zeros_like(rows)
if size > 1:
    owner[owner == size - 1] = 0  # the last rank receives nothing
    got = _dist.route_rows({"id": rows, "odd": rows % 2 == 1, "pair": torch.stack([rows, -rows], 1).float()},
                           owner, "cpu")
    saved["routed"] = got
    default, _dist.ROUTE_BLOCK_BYTES = _dist.ROUTE_BLOCK_BYTES, 40  # 5 rows of "pair" a block: many blocks
    columns = {"id": rows, "odd": rows % 2 == 1, "pair": torch.stack([rows, -rows], 1).float()}
    saved["routed_blocks"] = _dist.route_rows(dict(columns), owner, "cpu")
    count = len(got["id"])
    saved["routed_placed"] = _dist.route_rows(columns, owner, "cpu", place=torch.arange(count).flip(0), consume=True)
    assert not columns  # consumed
    _dist.ROUTE_BLOCK_BYTES = default

CASES = {"per_class": dict(strategy="gradmatch"),
         "per_class_val": dict(strategy="gradmatch", target="val"),
         "full": dict(strategy="gradmatch", embedding="full"),
         "bias": dict(strategy="gradmatch", embedding="bias", target="val"),
         "global": dict(strategy="gradmatch", mode="global"),
         "glister": dict(strategy="glister"),
         "glister_naive": dict(strategy="glister", variant="naive"),
         "glister_exact": dict(strategy="glister", refresh=1),
         "glister_blocks": dict(strategy="glister", block=64),  # the held-out split in 5 blocks
         "per_class_bf16": dict(strategy="gradmatch", features_dtype=torch.bfloat16),
         "glister_bf16": dict(strategy="glister", features_dtype=torch.bfloat16),
         # candidate pools: the same seeded candidates on every rank, scored sharded
         "per_class_pool": dict(strategy="gradmatch", pool=2),
         "glister_pool": dict(strategy="glister", pool=2.5),
         "el2n_pool": dict(strategy="el2n", pool=2, pretrain_epochs=0)}
# two classes over up to three ranks: a rank may own no class at all
images = torch.stack([bundle.train[int(i)][0] for i in pool])
parity = torch.utils.data.TensorDataset(images, bundle.labels[pool] % 2)
strategy = strategies.make("gradmatch", fraction=0.2, every=1)
driver = Driver(strategy, model, parity, bundle.labels[pool] % 2, num_classes=2, epochs=1, batch_size=32, seed=4)
driver.begin_epoch(0)
saved["two_classes"] = {"indices": driver.sampler.selection.indices, "weights": driver.sampler.selection.weights,
                        "report": strategy.report()}

for name, params in CASES.items():
    params = dict(params)
    glister_module.VAL_BLOCK = params.pop("block", 4096)
    dtype = params.pop("features_dtype", torch.float32)
    strategy = strategies.make(params.pop("strategy"), fraction=0.2, every=1, **params)
    driver = Driver(strategy, model, train, bundle.labels[pool], num_classes=10, epochs=1, batch_size=32, seed=4,
                    val_set=torch.utils.data.Subset(bundle.train, held.tolist()), features_dtype=dtype)
    driver.begin_epoch(0)
    selection = driver.sampler.selection
    saved[name] = {"indices": selection.indices, "weights": selection.weights, "report": strategy.report()}


@dataclasses.dataclass
class SlowOnRankZero(Random):
    """A round that costs 0.4 s on rank 0 and nothing on the others."""

    name = "slow_on_rank_zero"

    def choose(self, epoch):
        if rank == 0:
            time.sleep(0.4)
        return super().choose(epoch)


# The selection guard decides from the ranks' largest times: rank 0's round (0.4 s) against the
# last rank's training (0.3 s an epoch): at share 2 an interval of ceil(0.4 / 0.6) = 1 = every,
# so no rank stretches. Rank 0's own clock (training ~0 s) alone would stretch it to the run's end
# and leave the ranks on different schedules.
driver = Driver(SlowOnRankZero(fraction=0.3, every=1), model, train, bundle.labels[pool], num_classes=10, epochs=4,
                batch_size=1100, seed=4, max_selection_share=2.0)
for epoch in range(4):
    for _batch in driver.batches(epoch):
        if size > 1 and rank == size - 1:
            time.sleep(0.3)
saved["guard"] = {"epochs": [s["epoch"] for s in driver.selections],
                  "intervals": [s["interval"] for s in driver.stretches]}
torch.save(saved, f"{out}/rank{rank}.pt")
