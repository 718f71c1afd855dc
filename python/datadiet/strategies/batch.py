"""Per-batch selection: ``selective_backprop`` (Jiang et al. 2019; MosaicML Composer's rule).

Before each backward pass the loop may ask for a keep mask. Between ``start`` and ``end`` (fractions
of training) and except every ``interrupt``-th batch, the strategy runs the selection pass
(the loop's ``batch_losses(scale)``: eval mode, no grad, BatchNorm statistics untouched, inputs
downsampled by ``scale_factor``) and keeps the batch's high-loss samples with
``SelectiveBackpropSelector`` (seeded draws on the device, no host numpy); the loop then
forwards and backpropagates only the kept samples. Outside that window no selection pass runs.
The selector's loss history and step counter are part of the checkpoint.

Both rules train on the kept part of each batch at once, as Composer does; Jiang et al. instead
queue kept samples until a full batch is ready. The expected gradient is the same, the batches
are smaller (about B/(β+1) for the Jiang rule at the same learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.select.selective_backprop import METHODS, SelectiveBackpropSelector
from datadiet.strategies.base import Strategy

_DEFAULTS = {"composer": {"start": 0.5, "end": 0.9, "interrupt": 2},
             "jiang": {"start": None, "end": 1.0, "interrupt": 0}}


@dataclass
class SelectiveBackprop(Strategy):
    """``rule="composer"``: exactly ``int(keep · B)`` samples by rank weights, from ``start=0.5`` to
    ``end=0.9`` of training, every ``interrupt=2``-nd batch of each epoch left whole. ``rule="jiang"``: each
    sample kept with probability percentile^``beta`` among the last ``history`` losses, from the
    second epoch (``start=None``) to the end. ``scale_factor`` < 1 downsamples image inputs for
    the selection pass (Composer's option)."""

    name = "selective_backprop"
    rule: str = "composer"
    keep: float = 0.5
    beta: float = 3.0
    history: int = 1024
    start: Optional[float] = field(default=None)
    end: Optional[float] = None
    interrupt: Optional[int] = None
    scale_factor: float = 1.0
    _selector: Optional[SelectiveBackpropSelector] = field(default=None, init=False, repr=False)
    _batches: int = field(default=0, init=False, repr=False)

    def setup(self, context) -> None:
        super().setup(context)
        if self.rule not in METHODS:
            raise ValueError(f"selective_backprop: rule must be one of {METHODS}, got {self.rule!r}")
        defaults = _DEFAULTS[self.rule]
        if self.start is None:
            self.start = defaults["start"] if defaults["start"] is not None else 1.0 / context.epochs
        self.end = defaults["end"] if self.end is None else self.end
        self.interrupt = defaults["interrupt"] if self.interrupt is None else self.interrupt
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"selective_backprop: need 0 <= start <= end <= 1, got start={self.start}, "
                             f"end={self.end}")
        if isinstance(self.interrupt, bool) or not isinstance(self.interrupt, int) or self.interrupt < 0:
            raise ValueError(f"selective_backprop: interrupt must be an int >= 0, got {self.interrupt!r}")
        if not 0.0 < float(self.scale_factor) <= 1.0:
            raise ValueError(f"selective_backprop: scale_factor must be in (0, 1], got {self.scale_factor}")
        self._selector = SelectiveBackpropSelector(self.rule, beta=self.beta, history_size=self.history,
                                                   keep=self.keep, seed=derive_seed(context.seed, 4, context.rank),
                                                   device=context.device)

    def select(self, epoch: int):
        self._batches = 0  # Composer counts interrupts by the batch's position in its epoch
        return super().select(epoch)

    def batch_mask(self, progress: float, batch_losses: Callable[[float], torch.Tensor]) -> Optional[torch.Tensor]:
        self._batches += 1
        if not self.start <= progress < self.end:
            return None
        if self.interrupt and self._batches % self.interrupt == 0:
            return None
        return self._selector.keep_mask(batch_losses(self.scale_factor))

    def state_dict(self) -> dict:
        return {"selector": self._selector.state_dict(), "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        self._selector.load_state_dict(state["selector"])
        self._batches = int(state["batches"])
