"""``FromModel``: any strategy whose first selections score a given model instead of the one being
trained — how a pre-trained scorer (the LiPT study's LiPT soup, a checkpoint from elsewhere) supplies
the gradients of GraNd / GradMatch / GLISTER while the main run starts from a fresh
initialisation. Later re-selections (``every`` R epochs) score the training model again.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Optional

import torch
from torch import nn

from datadiet.select.selection import Selection
from datadiet.strategies.base import Context, Strategy


def fingerprint(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (a resumed run must score the same model)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FromModel(Strategy):
    """``inner``'s selections, the first ``rounds`` of them scored with ``model`` (which must share
    the training model's architecture where the strategy reads it: the head at the same path)."""

    def __init__(self, inner: Strategy, model: nn.Module, rounds: int = 1):
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"FromModel: rounds must be an int >= 1, got {rounds!r}")
        self.inner, self.model, self.rounds = inner, model, rounds
        self.fingerprint = fingerprint(model)
        self.used = 0  # selection rounds that scored ``model``
        self._calls, self._by = 0, None

    # what the loop reads off a strategy, passed through
    name = property(lambda self: self.inner.name)
    observes = property(lambda self: self.inner.observes)
    observes_correct = property(lambda self: self.inner.observes_correct)
    needs_head = property(lambda self: self.inner.needs_head)
    filters_batches = property(lambda self: self.inner.filters_batches)
    rescales_loss = property(lambda self: self.inner.rescales_loss)

    def describe(self) -> str:
        return f"{super().describe()}({self.inner.describe()}, model={self.fingerprint}, rounds={self.rounds})"

    __repr__ = describe

    def setup(self, context: Context) -> None:
        super().setup(context)
        self.model = self.model.to(context.device)
        scored = copy.copy(context)
        scored.score = self._score
        self.inner.setup(scored)

    def _score(self, split: str = "train", **wanted):
        if self.used >= self.rounds:
            return self.context.score(split=split, **wanted)
        self._calls += 1
        return self.context.score(split=split, model=self.model, **wanted)

    def planned_size(self, epoch: int) -> int:
        return self.inner.planned_size(epoch)

    def reselects_every(self) -> Optional[int]:
        return self.inner.reselects_every()

    def stretch(self, interval: int, since: int) -> bool:
        return self.inner.stretch(interval, since)

    def select(self, epoch: int) -> Optional[Selection]:
        calls = self._calls
        selection = self.inner.select(epoch)
        if selection is not None:  # a warm-up's full pool scores nothing and counts no round
            self._by = "pretrained" if self._calls > calls else "training" if self.used >= self.rounds else None
            self.used += self._calls > calls
        return selection

    def observe(self, indices, losses, correct) -> None:
        self.inner.observe(indices, losses, correct)

    def batch_mask(self, progress, batch_losses):
        return self.inner.batch_mask(progress, batch_losses)

    def log(self) -> dict[str, Any]:
        return self.inner.log()

    def report(self) -> dict[str, Any]:
        return {**self.inner.report(), **({"scored_by": self._by} if self._by else {})}

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "used": self.used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.used = int(state["used"])
