"""Forgetting events (Toneva et al. 2019), counted from the training forward pass.

Each time a sample is presented, whether the model classified it correctly *before* the step
is recorded; a forgetting event is a correct → incorrect transition between consecutive
presentations. Samples never classified correctly get the maximum count (``never_learned``),
as in the paper. Counters live on the device and are updated with vectorised scatters (a
sample appearing twice in one update, as DistributedSampler's padding can cause, writes the
same value twice, never a lost or doubled increment).
"""

from __future__ import annotations

from typing import Any

import torch


class ForgettingCounter:
    def __init__(self, n: int, device="cpu"):
        self.n = int(n)
        self.last = torch.full((n,), -1, dtype=torch.int8, device=device)  # -1 unseen, 0 wrong, 1 right
        self.events = torch.zeros(n, dtype=torch.int32, device=device)
        self.learned = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        idx = indices.to(self.last.device, torch.int64)
        now = correct.to(self.last.device, torch.int8)
        forgot = (self.last[idx] == 1) & (now == 0)
        self.events[idx] = self.events[idx] + forgot.to(torch.int32)
        self.learned[idx] = self.learned[idx] | (now == 1)
        self.last[idx] = now

    def scores(self) -> torch.Tensor:
        """float32 [n]: forgetting events; never-learned samples get ``never_learned`` (the
        maximum count + 1, so they rank above every sample that was learned at least once)."""
        counts = self.events.float()
        never = counts.max() + 1 if self.n else counts.new_zeros(())
        return torch.where(self.learned, counts, never)

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "last": self.last.cpu(), "events": self.events.cpu(), "learned": self.learned.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n:
            raise ValueError(f"ForgettingCounter: saved counters are for {state['n']} samples, this run has {self.n}")
        for name in ("last", "events", "learned"):
            getattr(self, name).copy_(state[name])
