"""The subset size of a selection strategy, from a fraction or an explicit budget, and its split
over classes."""

from __future__ import annotations

import math
from typing import Optional


def fraction_budget(fraction: float, n: int) -> int:
    """``ceil(fraction · n)``, at least 1, where a product that is a whole number but for the last
    bits of its float rounding counts as that number (0.3 · 10 is 3.0000000000000004: 3, not 4)."""
    return max(1, math.ceil(round(float(fraction) * n, 6)))


def subset_size(n: int, fraction: Optional[float], budget: Optional[int], op: str) -> int:
    """``ceil(fraction · n)`` (at least 1) or ``budget``; exactly one must be given."""
    if (fraction is None) == (budget is None):
        raise ValueError(f"datadiet.{op}: pass exactly one of fraction and budget")
    if fraction is not None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"datadiet.{op}: fraction must be in (0, 1], got {fraction}")
        return fraction_budget(fraction, n)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= n:
        raise ValueError(f"datadiet.{op}: budget must be an int in [1, {n}], got {budget!r}")
    return budget


def class_budgets(counts: list[int], k: int) -> list[int]:
    """Per-class shares of a budget ``k``: ``min(n_c, ceil(k · n_c / n))`` (at most one more than
    k in total per class, never more than a class holds)."""
    n = sum(counts)
    return [min(c, math.ceil(k * c / n)) for c in counts] if n else [0 for _ in counts]
