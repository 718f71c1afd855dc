"""The scoring pass: one no-grad, eval-mode pass of a classifier over a dataset gives every
per-sample score of ``ce_scores`` in dataset order, with the final ``nn.Linear``'s inputs
(penultimate features) captured by a forward pre-hook in the same pass.

``score_dataset(model, dataset, head=...)`` takes an index-aware dataset (``ds[i] -> (x, y, i)``):
each row of the table is the sample whose index the loader returned, so shuffled, sharded or
distributed passes fill the same table. Under ``torch.distributed`` each rank scores its shard
(``rank::world``); ``gather`` says where the rows go: ``"all"`` (every rank holds the full
table), ``"root"`` (rank 0 alone; the others get None) or ``"local"`` (each rank keeps its own
rows, ``table.index`` naming them, to route further, e.g. by class). The model's
train/eval modes are restored afterwards; BatchNorm statistics never move. ``grad_scope="full"``
replaces last-layer GraNd by the exact whole-model per-sample gradient norm (``grad_norms``).

``score_shards(model, dataset, shards)`` is the same pass over ranges of rows, one table per
range as it finishes, through one DataLoader (a selection job's shards kept on disk). On CUDA the
loaders pin host memory so the copies overlap the forward passes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from datadiet._dist import unwrap
from datadiet._dist import world as dist_world
from datadiet._dist import gather_rows, route_rows
from datadiet.ops.ce_scores import ce_scores
from datadiet.scores.grad_norms import grad_norms

GRAD_SCOPES = ("last_layer", "full")
GATHERS = ("all", "root", "local")


@dataclass
class ScoreTable:
    """Per-sample scores of a dataset of ``n`` samples, row i = sample i (see ``ce_scores``).
    ``labels`` int64; ``features`` [n, D] and ``errors`` (p − onehot, [n, C]) when asked for;
    ``logits`` [n, C] when asked for. ``index``: the dataset rows of a partial table (row r is
    sample ``index[r]``); None when row i is sample i."""

    loss: torch.Tensor
    el2n: torch.Tensor
    grad_norm: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor
    correct: torch.Tensor
    labels: torch.Tensor
    errors: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    index: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.loss.numel())

    def to(self, device) -> "ScoreTable":
        return ScoreTable(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                             for f in fields(self)})


def final_linear(model: nn.Module, name: Optional[str] = None) -> nn.Linear:
    """The model's classification layer: the module called ``name``, or else the last
    ``nn.Linear`` in ``model.modules()`` order (torchvision's ``fc`` / ``classifier[-1]`` / ``head``)."""
    model = unwrap(model)  # (Distributed)DataParallel
    if name is not None:
        modules = dict(model.named_modules())
        if name not in modules:
            raise ValueError(f"final_linear: the model has no module named {name!r}")
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(f"final_linear: module {name!r} is a {type(modules[name]).__name__}, not an nn.Linear")
        return modules[name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"final_linear: the model ({type(model).__name__}) has no nn.Linear layer; this strategy "
                         "needs the classification layer's inputs (name it with head=... / --head, or use a "
                         "strategy that needs no features)")
    return linears[-1]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode (BatchNorm uses its running statistics, dropout off) and no grad, restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def score_dataset(model: nn.Module, dataset, *, head: Optional[nn.Linear] = None, features: bool = False,
                  errors: bool = False, logits: bool = False, batch_size: int = 256, device=None, workers: int = 0,
                  autocast_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                  progress=None, grad_scope: str = "last_layer", grad_mode: str = "auto",
                  gather: str = "all", features_dtype: torch.dtype = torch.float32) -> Optional[ScoreTable]:
    """Scores every sample of ``dataset`` (index-aware: ``ds[i] -> (x, y, i)``) with ``model``.

    ``features``/``errors`` need the classification layer (``head``, found with ``final_linear``
    when omitted); its inputs' squared norms always feed ``grad_norm`` (last-layer GraNd) when a
    head is known. ``grad_scope="full"`` makes ``grad_norm`` the exact norm over every trainable
    parameter instead (``grad_norms``, one extra forward and backward per batch, in eval mode,
    full precision; ``grad_mode`` is its mode). ``progress`` wraps the batch iterator (e.g. a
    tqdm factory). ``gather``: where a distributed pass's rows go (module docstring).
    ``features_dtype``: the dtype the features are kept in (``torch.bfloat16`` halves the table;
    the GraNd norms are computed from the full-precision features first)."""
    if gather not in GATHERS:
        raise ValueError(f"score_dataset: gather must be one of {GATHERS}, got {gather!r}")
    model = unwrap(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n = len(dataset)
    world, rank = dist_world()
    if world > n:
        raise ValueError(f"score_dataset: {n} samples cannot be sharded over {world} ranks")
    mine = list(range(rank, n, world))
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    local = _joined(_score_batches(model, loader, head=head, features=features, errors=errors, logits=logits,
                                   device=device, autocast_dtype=autocast_dtype, channels_last=channels_last,
                                   progress=progress, grad_scope=grad_scope, grad_mode=grad_mode,
                                   features_dtype=features_dtype), len(mine))
    index = local.pop("index", torch.zeros(0, dtype=torch.int64))
    if world > 1 and gather == "local":
        return ScoreTable(**local, index=index.to(device)) if local else _empty(device, index=True)
    if world > 1 and gather == "root":  # each row written straight to its place in rank 0's table
        owner = torch.zeros(index.shape[0], dtype=torch.int64)
        place = route_rows({"index": index}, owner, device)["index"]
        local = route_rows(local, owner, device, place=place, consume=True)
        return (ScoreTable(**local) if local else _empty(device)) if rank == 0 else None
    if world > 1:
        local = gather_rows({**local, "__index__": index}, device)
        index = local.pop("__index__")
    table = {}
    for name in list(local):
        value = local.pop(name)  # each gathered column let go once it is in dataset order
        full = value.new_empty((n, *value.shape[1:]))
        full[index.to(value.device)] = value
        table[name] = full
        del value
    return ScoreTable(**table) if table else _empty(device)


class ShardBatches:
    """A batch sampler over ``shards`` (ranges of dataset rows) in order, cutting each shard into
    batches of ``batch_size`` (its last one ragged) so that no batch spans two shards."""

    def __init__(self, shards: Sequence[range], batch_size: int):
        self.shards, self.batch_size = list(shards), batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.shards:
            for start in range(shard.start, shard.stop, self.batch_size):
                yield list(range(start, min(shard.stop, start + self.batch_size)))

    def __len__(self) -> int:
        return sum(math.ceil(len(shard) / self.batch_size) for shard in self.shards)


def score_shards(model: nn.Module, dataset, shards: Sequence[range], *, head: Optional[nn.Linear] = None,
                 features: bool = False, errors: bool = False, logits: bool = False, batch_size: int = 256,
                 device=None, workers: int = 0, autocast_dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False, progress=None, grad_scope: str = "last_layer",
                 grad_mode: str = "auto", features_dtype: torch.dtype = torch.float32
                 ) -> Iterator[tuple[int, ScoreTable]]:
    """Scores ``shards`` (ranges of ``dataset`` rows, in the order given) through one DataLoader, so
    its workers start once and stay busy across shard boundaries; yields ``(s, table)`` as shard
    ``shards[s]`` finishes, table row r = sample ``shards[s][r]``. Batches never span two shards
    (``ShardBatches``): a shard's scores are the same whichever shards are scored with it, by
    whichever process. No collectives: under torchrun each rank scores the shards it is given.
    Options as ``score_dataset``'s."""
    model = unwrap(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shards = list(shards)
    for shard in shards:
        if not (isinstance(shard, range) and shard.step == 1 and 0 <= shard.start < shard.stop <= len(dataset)):
            raise ValueError(f"score_shards: a shard must be a non-empty range of rows in [0, {len(dataset)}), got "
                             f"{shard!r}")
    loader = DataLoader(dataset, batch_sampler=ShardBatches(shards, batch_size), num_workers=workers,
                        pin_memory=device.type == "cuda")
    batches = _score_batches(model, loader, head=head, features=features, errors=errors, logits=logits,
                             device=device, autocast_dtype=autocast_dtype, channels_last=channels_last,
                             progress=progress, grad_scope=grad_scope, grad_mode=grad_mode,
                             features_dtype=features_dtype)
    for s, shard in enumerate(shards):
        table = _joined((next(batches) for _ in range(math.ceil(len(shard) / batch_size))), len(shard))
        index = table.pop("index")
        if not torch.equal(index.cpu(), torch.arange(shard.start, shard.stop)):
            raise RuntimeError(f"score_shards: the dataset returned indices other than rows {shard.start}..."
                               f"{shard.stop - 1} (it must be index-aware: ds[i] -> (x, y, i))")
        yield s, ScoreTable(**table)


def _score_batches(model: nn.Module, loader, *, head, features, errors, logits, device, autocast_dtype, channels_last,
                   progress, grad_scope, grad_mode, features_dtype) -> Iterator[dict[str, torch.Tensor]]:
    """Each batch's rows: every ``ce_scores`` score, labels, the dataset indices (``index``) and
    what was asked for (errors, features, logits), on ``device``."""
    if grad_scope not in GRAD_SCOPES:
        raise ValueError(f"score_dataset: grad_scope must be one of {GRAD_SCOPES}, got {grad_scope!r}")
    if head is None and (features or errors):
        head = final_linear(model)
    captured = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) if head is not None else None
    try:
        with eval_mode(model):
            for x, y, i in (progress(loader) if progress else loader):
                x = x.to(device, non_blocking=True)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = torch.as_tensor(y).to(device, torch.int64)
                captured.clear()
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    z = model(x)
                z = z.float()
                h = captured[-1].float().flatten(1) if captured else None
                s = ce_scores(z, y, feature_sqnorm=None if h is None else h.pow(2).sum(1), return_embedding=errors)
                row = {name: getattr(s, name) for name in ("loss", "el2n", "grad_norm", "confidence", "margin",
                                                           "entropy", "correct")}
                if grad_scope == "full":
                    row["grad_norm"] = grad_norms(model, x, y, mode=grad_mode).float()
                    captured.clear()  # the head's hook saw that pass too: drop its graph now
                row["labels"] = y
                if errors:
                    row["errors"] = s.embedding
                if features:
                    row["features"] = h.to(features_dtype)
                if logits:
                    row["logits"] = z
                row["index"] = torch.as_tensor(i, dtype=torch.int64)
                yield row
    finally:
        if hook is not None:
            hook.remove()


def _joined(batches, rows: int) -> dict[str, torch.Tensor]:
    """The batches' rows (``_score_batches``, ``rows`` in all) in one tensor per name, each written
    into place as its batch arrives (no list of batches next to their concatenation)."""
    out: dict[str, torch.Tensor] = {}
    at = 0
    for batch in batches:
        length = next(iter(batch.values())).shape[0]
        if at + length > rows:
            raise RuntimeError(f"score_dataset: the loader gave more than the {rows} rows asked for")
        for name, value in batch.items():
            if name not in out:
                out[name] = value.new_empty((rows, *value.shape[1:]))
            out[name][at:at + length] = value
        at += length
    if at != rows:
        raise RuntimeError(f"score_dataset: the loader gave {at} rows of the {rows} asked for")
    return out


def _empty(device, index: bool = False) -> ScoreTable:
    empty = torch.zeros(0, device=device)
    table = {name: empty for name in ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy")}
    return ScoreTable(**table, correct=empty.bool(), labels=empty.long(), index=empty.long() if index else None)
