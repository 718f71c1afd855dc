"""Learning-rate schedules stepped once per optimisation step, not per epoch, so they stay right
when a subset shortens the epoch (the peers' schedules in epochs silently stretch or shrink).

``schedule(optimizer, name, total_steps, warmup_steps=0, ...)`` returns a
``torch.optim.lr_scheduler.LambdaLR`` whose factor multiplies each group's initial lr:

- ``constant``: 1;
- ``cosine``: ½(1 + cos(π·t)) from 1 down to ``final`` (a fraction of the peak), t the fraction of
  the post-warm-up steps done;
- ``step``: ``gamma`` to the number of ``milestones`` (fractions of ``total_steps``) passed;
- ``onecycle``: ``cosine`` with a long warm-up (default 30% of the steps).

Warm-up: linear from ``1/(warmup_steps+1)`` to 1 over ``warmup_steps`` steps. The scheduler's
``state_dict`` is the step count and the plan, so a resumed run continues on the same curve.
``resize(total_steps)`` re-plans the remaining curve when a selection turns out to train more or
fewer steps than planned (the warm-up is kept), so the schedule ends on the run's last step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

SCHEDULES = ("constant", "cosine", "step", "onecycle")


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A ``LambdaLR`` that remembers its plan (saved in ``state_dict``) and can be re-sized."""

    def __init__(self, optimizer, name: str, total_steps: int, warmup_steps: int, options: dict):
        self.name, self.total_steps, self.warmup_steps, self.options = name, total_steps, warmup_steps, options
        super().__init__(optimizer, factor(name, total_steps, warmup_steps, **options))

    def resize(self, total_steps: int) -> None:
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.lr_lambdas = [factor(self.name, self.total_steps, self.warmup_steps, **self.options)
                           for _ in self.optimizer.param_groups]
        for group, base, f in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * f(self.last_epoch)  # the current step takes the new curve at once
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self.resize(self.total_steps)


def schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0, *,
             final: float = 0.0, gamma: float = 0.1, milestones: Sequence[float] = (0.5, 0.75),
             ) -> StepSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"schedule: name must be one of {SCHEDULES}, got {name!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"schedule: total_steps must be a positive int, got {total_steps!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"schedule: warmup_steps must be in [0, total_steps = {total_steps}), got {warmup_steps}")
    if not 0.0 <= final <= 1.0:
        raise ValueError(f"schedule: final must be in [0, 1], got {final}")
    if name == "onecycle" and warmup_steps == 0:
        warmup_steps = max(1, int(0.3 * total_steps)) if total_steps > 1 else 0
    return StepSchedule(optimizer, name, total_steps, warmup_steps,
                        {"final": final, "gamma": gamma, "milestones": tuple(milestones)})


def factor(name: str, total_steps: int, warmup_steps: int, *, final: float = 0.0, gamma: float = 0.1,
           milestones: Sequence[float] = (0.5, 0.75)) -> Callable[[int], float]:
    """The lr multiplier as a function of the optimisation step (0-based)."""
    ends = sorted(int(round(m * total_steps)) for m in milestones)

    def after_warmup(step: int) -> float:
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "constant":
            return 1.0
        if name == "step":
            return gamma ** sum(step >= e for e in ends)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    def f(step: int) -> float:
        return (step + 1) / (warmup_steps + 1) if step < warmup_steps else after_warmup(step)

    return f
