"""Per-batch selection: ``selective_backprop`` (Jiang et al. 2019; MosaicML Composer's rule) and
``adaselection`` (the AdaSelection study; ``datadiet.select.adaselection``, a reconstruction).

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
from typing import Any, Callable, Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.select.adaselection import METHODS as ADA_METHODS
from datadiet.select.adaselection import AdaSelector
from datadiet.select.selective_backprop import METHODS, SelectiveBackpropSelector
from datadiet.strategies.base import Strategy

_DEFAULTS = {"composer": {"start": 0.5, "end": 0.9, "interrupt": 2},
             "jiang": {"start": None, "end": 1.0, "interrupt": 0}}
MAX_HISTORY = 1 << 20  # losses the Jiang rule ranks against, kept on the device


def method_names(methods: Any) -> tuple:
    """AdaSelection's ``methods`` as a tuple: from a comma-separated string or a list of strings;
    () for anything else (refused)."""
    if isinstance(methods, str):
        return tuple(m.strip() for m in methods.split(",") if m.strip())
    if isinstance(methods, (tuple, list)) and all(isinstance(m, str) for m in methods):
        return tuple(methods)
    return ()


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rule not in METHODS:
            raise ValueError(f"selective_backprop: rule must be one of {METHODS}, got {self.rule!r}")
        self.need(0 < self.keep <= 1, "keep", "in (0, 1] (the fraction of each batch trained on)")
        self.need(self.beta >= 0, "beta", ">= 0 (the Jiang rule's selectivity)")
        self.need(1 <= self.history <= MAX_HISTORY, "history", f"an int in [1, {MAX_HISTORY}] (losses kept)")
        for key in ("start", "end"):
            self.need(getattr(self, key) is None or 0 <= getattr(self, key) <= 1, key,
                      "in [0, 1] (a fraction of training) or None (the rule's default)")
        self.check_window()
        if self.interrupt is not None and self.interrupt < 0:
            raise ValueError(f"selective_backprop: interrupt must be an int >= 0, got {self.interrupt!r}")
        if not 0.0 < self.scale_factor <= 1.0:
            raise ValueError(f"selective_backprop: scale_factor must be in (0, 1], got {self.scale_factor}")

    def check_window(self) -> None:
        """start <= end, once both are known (given, or the rule's defaults at set-up)."""
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"selective_backprop: need 0 <= start <= end <= 1, got start={self.start}, "
                             f"end={self.end}")

    def setup(self, context) -> None:
        super().setup(context)
        defaults = _DEFAULTS[self.rule]
        if self.start is None:
            self.start = defaults["start"] if defaults["start"] is not None else 1.0 / context.epochs
        self.end = defaults["end"] if self.end is None else self.end
        self.interrupt = defaults["interrupt"] if self.interrupt is None else self.interrupt
        self.check_window()
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


@dataclass
class AdaSelection(Strategy):
    """AdaSelection (the AdaSelection study; a RECONSTRUCTION, see ``datadiet.select.adaselection``): each batch
    after ``start`` (a fraction of training) keeps ``ceil(keep · B)`` samples by the method-weighted
    importance of ``methods`` (a tuple or a comma-separated string of ``uniform``, ``big_loss``,
    ``small_loss``, ``grad_norm``, ``adaboost``, ``coreset1``, ``coreset2``); the method weights
    learn from the loss decrease (``eta``, ``ema``) and the curriculum term (``lam``); ``tau``
    tempers the loss softmaxes, ``delta`` clips AdaBoost's error; ``draw=True`` samples instead of
    taking the top k. The weights are in the checkpoint and in every epoch's metrics. Under torchrun
    each rank selects within its own batches and learns its own weights (its checkpoint state);
    the metrics show rank 0's."""

    name = "adaselection"
    methods: Any = ("big_loss", "small_loss", "uniform")
    keep: float = 0.5
    eta: float = 0.1
    tau: float = 1.0
    lam: float = 0.0
    ema: float = 0.9
    delta: float = 1e-3
    draw: bool = False
    start: float = 0.0
    _selector: Optional[AdaSelector] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        names = method_names(self.methods)
        if not names or not set(names) <= set(ADA_METHODS) or len(set(names)) != len(names):
            raise ValueError(f"adaselection: methods must be distinct names from {ADA_METHODS} (a list or a "
                             f"comma-separated string), got {self.methods!r}")
        for key, ok, what in (("keep", 0 < self.keep <= 1, "in (0, 1]"), ("eta", self.eta >= 0, ">= 0"),
                              ("tau", self.tau > 0, "> 0"), ("lam", self.lam >= 0, ">= 0"),
                              ("ema", 0 <= self.ema <= 1, "in [0, 1]"),
                              ("delta", 0 < self.delta <= 0.5, "in (0, 0.5]")):
            self.need(ok, key, what)
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"adaselection: start must be in [0, 1) (a fraction of training), got {self.start!r}")

    def setup(self, context) -> None:
        super().setup(context)
        self.methods = method_names(self.methods)
        self._selector = AdaSelector(self.methods, keep=self.keep, eta=self.eta, tau=self.tau, lam=self.lam,
                                     ema=self.ema, delta=self.delta, draw=self.draw, num_classes=context.num_classes,
                                     seed=derive_seed(context.seed, 11, context.rank))

    def batch_mask(self, progress: float, batch_losses: Callable[..., Any]) -> Optional[torch.Tensor]:
        if progress < self.start:
            return None
        losses, grad_norm, correct = batch_losses(1.0, details=True)
        picks = self._selector.select(losses, progress, grad_norm=grad_norm,
                                      wrong=None if correct is None else ~correct)  # None: a regression
        mask = torch.zeros(losses.numel(), dtype=torch.bool, device=losses.device)
        mask[picks] = True
        return mask

    def log(self) -> dict:
        return {"method_weights": dict(zip(self.methods, self._selector.weights.tolist()))}

    def state_dict(self) -> dict:
        return {"selector": self._selector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._selector.load_state_dict(state["selector"])
