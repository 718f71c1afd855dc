"""GraNd and EL2N as their paper defines them (Paul et al. 2021): the score of a sample averaged
over K independent initialisations, each optionally trained E epochs first.

``grand(model_fn, dataset, inits=10, epochs=0)`` builds model k with torch's global generator
seeded from ``(seed, k)`` (restored afterwards), trains it ``epochs`` epochs (SGD with momentum,
shuffled by its own seeded generator — or ``train_fn(model, k)``), and scores the whole dataset in
a fixed order with the scoring pass (``score_dataset``: streamed through a loader, sharded over
torchrun ranks and gathered, eval mode). GraNd is the exact per-sample gradient norm over every
trainable parameter (``scope="full"``, ``grad_norms``) or the final layer's
(``scope="last_layer"``); ``el2n`` is ‖softmax − onehot‖. Same seed, same scores.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from datadiet._dist import world as dist_world
from datadiet._seeds import derive_seed, seeded_global_rng
from datadiet.scores.indexed import IndexedDataset
from datadiet.scores.scoring import GRAD_SCOPES, final_linear, score_dataset


@dataclass
class RepeatedScores:
    """``per_init`` [K, n] scores of each initialisation; ``mean`` / ``std`` [n] over them
    (``std`` is 0 for K = 1)."""

    per_init: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.per_init.mean(0)

    @property
    def std(self) -> torch.Tensor:
        return self.per_init.std(0, correction=0)


def grand(model_fn: Callable[[], nn.Module], dataset, *, inits: int = 10, epochs: int = 0, scope: str = "full",
          seed: int = 0, **options) -> RepeatedScores:
    """GraNd: the per-sample gradient norm averaged over ``inits`` initialisations.

    Args:
        model_fn: builds a fresh, randomly initialised classifier (called under a seeded global
            generator, once per initialisation).
        dataset: map-style, ``ds[i] -> (input, class index)`` (extra items are ignored).
        inits: K >= 1 initialisations; epochs: E >= 0 training epochs of each before scoring.
        scope: ``"full"`` (every trainable parameter, exact) or ``"last_layer"``.
        seed: the seed every initialisation, shuffle and draw derives from.
        options: ``batch_size`` (128), ``lr`` (0.1), ``momentum`` (0.9), ``weight_decay`` (5e-4),
            ``device`` (the model's), ``workers`` (0), ``train_fn(model, init)`` to train instead,
            ``mode`` (``grad_norms``' mode), ``progress`` (a bar on a terminal).
    """
    if scope not in GRAD_SCOPES:
        raise ValueError(f"grand: scope must be one of {GRAD_SCOPES}, got {scope!r}")
    return _repeat("grad_norm", model_fn, dataset, inits, epochs, seed, options, grad_scope=scope)


def el2n(model_fn: Callable[[], nn.Module], dataset, *, inits: int = 10, epochs: int = 0, seed: int = 0,
         **options) -> RepeatedScores:
    """EL2N, ‖softmax − onehot‖, averaged over ``inits`` initialisations (arguments as ``grand``;
    the paper scores after a few epochs of training, e.g. ``epochs=20`` on CIFAR-10)."""
    return _repeat("el2n", model_fn, dataset, inits, epochs, seed, options)


_OPTIONS = {"batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "device": None, "workers": 0,
            "train_fn": None, "mode": "auto", "progress": None}


def _repeat(column: str, model_fn, dataset, inits: int, epochs: int, seed: int, options: dict,
            grad_scope: Optional[str] = None) -> RepeatedScores:
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; accepted: {sorted(_OPTIONS)}")
    o = {**_OPTIONS, **options}
    for name, value, low in (("inits", inits, 1), ("epochs", epochs, 0), ("batch_size", o["batch_size"], 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    indexed = IndexedDataset(_Pairs(dataset))
    rows = []
    for init in _bar(range(inits), o["progress"]):
        with seeded_global_rng(derive_seed(seed, 31, init)):
            model = model_fn()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
        device = torch.device(o["device"]) if o["device"] is not None else _device_of(model)
        model.to(device)
        if epochs:
            if o["train_fn"] is not None:
                o["train_fn"](model, init)
            else:
                _train(model, indexed, epochs, device, derive_seed(seed, 32, init), o)
        # Last-layer GraNd needs the classification layer's inputs (without them it is EL2N).
        head = final_linear(model) if grad_scope == "last_layer" else None
        table = score_dataset(model, indexed, head=head, batch_size=o["batch_size"], device=device,
                              workers=o["workers"], grad_scope=grad_scope or "last_layer", grad_mode=o["mode"])
        rows.append(getattr(table, column).float().cpu())
    return RepeatedScores(torch.stack(rows))


def _train(model: nn.Module, indexed, epochs: int, device: torch.device, seed: int, o: dict) -> None:
    """``epochs`` epochs of SGD over the whole dataset (every rank the same: no communication)."""
    opt = torch.optim.SGD(model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    loader = DataLoader(indexed, batch_size=o["batch_size"], shuffle=True, num_workers=o["workers"],
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    with seeded_global_rng(seed):  # dropout and augmentations draw from the global generator
        for _ in range(epochs):
            for x, y, _i in loader:
                loss = F.cross_entropy(model(x.to(device)), torch.as_tensor(y).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _bar(iterable, progress: Optional[bool]):
    """tqdm on rank 0 when stderr is a terminal (or ``progress=True``); else the iterable."""
    show = progress if progress is not None else sys.stderr.isatty()
    if not show or dist_world()[1] != 0:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc="initialisations", unit="init", leave=False)


class _Pairs:
    """``(input, target)`` of a dataset whose items may carry more (an index-aware one's ``i``)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return item[0], item[1]
