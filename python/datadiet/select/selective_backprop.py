"""Selective-Backprop: keep the high-loss part of each batch for the backward pass.

Two rules, both on any per-sample loss vector and
with state on the losses' device:

- ``"jiang"`` (Jiang et al. 2019): keep each sample with probability percentile^β of its loss
  among the last ``history_size`` losses; a random number of samples per batch.
- ``"composer"`` (MosaicML Composer's variant): exactly ``int(keep · n)`` samples drawn without
  replacement with rank weights ``((r + 0.5) / n)^(1/keep - 1)``, r the ascending loss rank.

Unlike Composer, draws are seeded (the same seed and batch sequence give the same picks on
every backend) and stay on the device. Running the scoring forward pass in eval mode (no
BatchNorm updates) and training on everything during the first epoch are the training
loop's job.
"""

from __future__ import annotations

from typing import Any

import torch

from datadiet.ops.selective_backprop import selective_backprop_keep_
from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample

METHODS = ("jiang", "composer")
_STATE_VERSION = 1


def _step_seed(seed: int, step: int) -> int:
    """SplitMix64 of (seed, step): one independent weighted_sample seed per batch."""
    z = (seed + (step + 1) * 0x9E3779B97F4A7C15) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return z ^ (z >> 31)


class SelectiveBackpropSelector:
    """Chooses which samples of each batch to backpropagate.

    >>> sel = SelectiveBackpropSelector("jiang", beta=3.0, history_size=1024, seed=0)
    >>> mask = sel.keep_mask(per_sample_losses)        # bool [n], no host sync
    >>> loss = per_sample_losses[mask].mean()

    ``state_dict()`` / ``load_state_dict()`` carry the loss history and the batch counter, so a
    resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, method: str = "jiang", *, beta: float = 3.0, history_size: int = 1024, keep: float = 0.5,
                 seed: int = 0, device: torch.device | str = "cpu", backend: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"SelectiveBackpropSelector: method must be one of {METHODS}, got {method!r}")
        if not float(beta) >= 0.0:
            raise ValueError(f"SelectiveBackpropSelector: beta must be >= 0, got {beta}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"SelectiveBackpropSelector: history_size must be a positive int, got {history_size!r}")
        if not 0.0 < float(keep) <= 1.0:
            raise ValueError(f"SelectiveBackpropSelector: keep must be in (0, 1], got {keep}")
        self.method, self.beta, self.keep, self.seed, self.backend = method, float(beta), float(keep), int(seed), backend
        self.step = 0
        self.history = torch.zeros(history_size, dtype=torch.float32, device=device)
        self.state = torch.zeros(2, dtype=torch.int64, device=device)

    def keep_mask(self, losses: torch.Tensor) -> torch.Tensor:
        """Bool ``[n]``: which samples of this batch to train on. Advances the batch counter."""
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            raise ValueError("SelectiveBackpropSelector: losses must be a 1-D tensor of per-sample losses, got "
                             + (f"shape {tuple(losses.shape)}" if isinstance(losses, torch.Tensor)
                                else type(losses).__name__))
        losses = losses.detach()
        if losses.device != self.history.device:
            raise ValueError(f"SelectiveBackpropSelector: losses are on {losses.device}, the selector's state on "
                             f"{self.history.device} (pass device= at construction)")
        if self.method == "jiang":
            mask, _ = selective_backprop_keep_(losses, self.history, self.state, beta=self.beta, seed=self.seed,
                                               step=self.step, backend=self.backend)
        else:
            mask = torch.zeros(losses.shape, dtype=torch.bool, device=losses.device)
            mask[self._composer_indices(losses)] = True
        self.step += 1
        return mask

    def select(self, losses: torch.Tensor) -> torch.Tensor:
        """int64 indices of the kept samples. ``"composer"``: in draw order, no host sync;
        ``"jiang"``: ascending, one host sync (the count is random)."""
        if self.method == "composer":
            out = self._composer_indices(losses.detach())
            self.step += 1
            return out
        return self.keep_mask(losses).nonzero().squeeze(1)

    def _composer_indices(self, losses: torch.Tensor) -> torch.Tensor:
        n = losses.numel()
        # Descending order, NaN last, so a NaN loss gets rank 0 (the smallest weight).
        by_loss = topk_select(losses.float(), n, largest=True, backend=self.backend)
        rank = torch.empty(n, dtype=torch.float32, device=losses.device)
        rank[by_loss] = torch.arange(n - 1, -1, -1, dtype=torch.float32, device=losses.device)
        weights = ((rank + 0.5) / n) ** (1.0 / self.keep - 1.0)
        return weighted_sample(weights, int(self.keep * n), seed=_step_seed(self.seed, self.step),
                               check_values=False, backend=self.backend)

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "method": self.method, "beta": self.beta, "keep": self.keep,
                "seed": self.seed, "step": self.step, "history": self.history.clone(), "state": self.state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"SelectiveBackpropSelector: unknown state version {state.get('version')!r}")
        for key in ("method", "beta", "keep", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(f"SelectiveBackpropSelector: saved {key} = {state[key]!r} differs from this "
                                 f"selector's {getattr(self, key)!r}")
        history, counters = state["history"], state["state"]
        if history.shape != self.history.shape or counters.shape != (2,):
            raise ValueError(f"SelectiveBackpropSelector: saved history has shape {tuple(history.shape)}, "
                             f"this selector's {tuple(self.history.shape)}")
        position, filled = (int(v) for v in counters.tolist())
        size = self.history.numel()
        if not (0 <= position < size and 0 <= filled <= size and (filled == size or position == filled)):
            raise ValueError(f"SelectiveBackpropSelector: saved state [{position}, {filled}] is invalid for a "
                             f"history of {size}")
        self.history.copy_(history)
        self.state.copy_(counters)
        self.step = int(state["step"])
