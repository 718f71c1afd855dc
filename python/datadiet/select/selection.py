"""``Selection``: what a selection strategy returns — unique dataset indices and optional
positive per-sample weights, validated against the dataset size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Selection:
    """A subset of a dataset of ``n`` samples: ``indices`` int64 ``[k]`` (unique, in ``[0, n)``)
    and ``weights`` float32 ``[k]`` (positive, finite; None: every weight 1)."""

    indices: torch.Tensor
    weights: Optional[torch.Tensor] = None

    @classmethod
    def full(cls, n: int) -> "Selection":
        return cls(torch.arange(n, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.indices.numel())

    def validate(self, n: int) -> "Selection":
        """Itself, on CPU with canonical dtypes, after checking it against a dataset of ``n``."""
        idx = self.indices
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Selection: indices must be a 1-D integer tensor, got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)} of shape {tuple(getattr(idx, 'shape', ()))}")
        idx = idx.to("cpu", torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            outside = int(idx[(idx < 0) | (idx >= n)][0])
            raise ValueError(f"Selection: index {outside} is outside the dataset of {n} samples")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("Selection: indices must be unique (a repeated sample would count twice)")
        weights = self.weights
        if weights is not None:
            if not isinstance(weights, torch.Tensor) or weights.shape != idx.shape:
                raise ValueError(f"Selection: weights must be a tensor of shape {tuple(idx.shape)}, got "
                                 f"{tuple(getattr(weights, 'shape', ()))}")
            weights = weights.to("cpu", torch.float32)
            bad = ~(torch.isfinite(weights) & (weights > 0))
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"Selection: weights must be finite and > 0, got weights[{i}] = {float(weights[i])} "
                                 f"for sample {int(idx[i])}")
        return Selection(idx, weights)

    def weight_table(self, n: int) -> torch.Tensor:
        """float32 ``[n]``: each selected sample's weight, 0 elsewhere."""
        table = torch.zeros(n, dtype=torch.float32)
        table[self.indices] = 1.0 if self.weights is None else self.weights
        return table
