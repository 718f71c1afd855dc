"""Selective-Backprop draws per minibatch: datadiet's device-resident rules vs how the peers
compute them, on one run's data (batch 256, history 1024, β = 3, keep 50%).

- Jiang et al.'s reference keeps the loss history in a Python deque and computes each
  sample's percentile on the host (numpy); datadiet's ``selective_backprop_keep_`` keeps it
  in a device tensor. Also the same rule in eager torch (``backend="torch"``).
- Composer sorts the batch's losses and draws with ``numpy.random.choice(p=...)`` on the host;
  datadiet ranks with ``topk_select`` and draws with ``weighted_sample``.
"""

from __future__ import annotations

import collections

import numpy as np
import torch

from .harness import Rows
from datadiet.ops import selective_backprop_keep_
from datadiet.select import SelectiveBackpropSelector


def add_arguments(p) -> None:
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--history", type=int, default=1024)
    p.add_argument("--beta", type=float, default=3.0)
    p.add_argument("--keep", type=float, default=0.5)


class JiangHost:
    """Jiang et al.'s selection as published: a host-side history and per-sample percentiles."""

    def __init__(self, history: int, beta: float) -> None:
        self.history = collections.deque(maxlen=history)
        self.beta = beta
        self.rng = np.random.default_rng(0)

    def keep_mask(self, losses: torch.Tensor) -> np.ndarray:
        values = losses.cpu().numpy()
        self.history.extend(values.tolist())
        past = np.sort(np.fromiter(self.history, dtype=np.float32))
        percentile = np.searchsorted(past, values, side="left") / len(past)
        return self.rng.random(len(values)) < percentile ** self.beta


def composer_host(losses: torch.Tensor, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Composer's draw: sort, rank weights ((r + 0.5)/n)^(1/keep - 1), numpy choice."""
    n = losses.numel()
    order = np.argsort(losses.cpu().numpy())
    weights = ((np.arange(n) + 0.5) / n) ** (1.0 / keep - 1.0)
    return order[rng.choice(n, size=int(keep * n), replace=False, p=weights / weights.sum())]


def run(args) -> list[dict]:
    device = args.device
    rows = Rows(device)
    g = torch.Generator().manual_seed(0)
    losses = (torch.rand(args.batch, generator=g) * 5).to(device)
    backend = "cuda" if device.type == "cuda" else "cpu"
    case = f"jiang: batch {args.batch}, history {args.history}, beta {args.beta}"
    rows.inputs(f"losses [{args.batch}], history [{args.history}]", losses.dtype)
    host = JiangHost(args.history, args.beta)
    rows.add(case, "python deque + numpy (Jiang et al.)", lambda: host.keep_mask(losses))
    state = {b: (torch.zeros(args.history, device=device), torch.zeros(2, dtype=torch.int64, device=device))
             for b in (backend, "torch")}
    rows.add(case, "same rule in eager torch", lambda: selective_backprop_keep_(
        losses, *state["torch"], beta=args.beta, seed=0, step=0, backend="torch"))
    rows.add(case, f"datadiet {backend}", lambda: selective_backprop_keep_(
        losses, *state[backend], beta=args.beta, seed=0, step=0, backend=backend),
        baselines=["python deque + numpy (Jiang et al.)", "same rule in eager torch"])

    case = f"composer: batch {args.batch}, keep {args.keep}"
    rows.inputs(f"losses [{args.batch}]", losses.dtype)
    rng = np.random.default_rng(0)
    rows.add(case, "argsort + numpy choice (Composer)", lambda: composer_host(losses, args.keep, rng))
    selector = SelectiveBackpropSelector("composer", keep=args.keep, seed=0, device=device, backend=backend)
    rows.add(case, f"datadiet {backend}", lambda: selector.select(losses),
             baselines=["argsort + numpy choice (Composer)"])
    return rows
