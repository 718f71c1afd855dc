"""Selection strategies behind one interface (``base.Strategy``), each reachable by its name:
``make("gradmatch", fraction=0.1, every=5)``; ``parameters(name)`` lists what one takes."""

from __future__ import annotations

import dataclasses
from typing import Any

from datadiet.strategies.adaptive import GradMatch, Glister
from datadiet.strategies.base import Context, Periodic, Strategy
from datadiet.strategies.batch import AdaSelection, SelectiveBackprop
from datadiet.strategies.cached import CachedGradMatch
from datadiet.strategies.loss_pruning import InfoBatch
from datadiet.strategies.static import (EL2N, Entropy, FixedSubset, Forgetting, Full, GraNd, LeastConfidence, Loss, Margin,
                                        Random, RandomOnline, RandomPB, ScoreBased)
from datadiet.strategies.strata import Strata

STRATEGIES: dict[str, type] = {cls.name: cls for cls in (
    Full, Random, RandomOnline, RandomPB, Loss, EL2N, GraNd, LeastConfidence, Margin, Entropy, Strata, Forgetting, GradMatch,
    CachedGradMatch, Glister, InfoBatch, SelectiveBackprop, AdaSelection)}


def parameters(name: str) -> dict[str, Any]:
    """The strategy's parameters and their defaults."""
    cls = _lookup(name)
    if not dataclasses.is_dataclass(cls):
        return {}
    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(cls) if f.init}


def make(name: str, **params) -> Strategy:
    """The strategy called ``name`` with ``params``; unknown names or parameters are refused."""
    cls = _lookup(name)
    allowed = parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"strategy {name!r} has no parameter {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(sorted(allowed)) or 'none'}")
    return cls(**params)


def _lookup(name: str) -> type:
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["AdaSelection", "CachedGradMatch", "Context", "EL2N", "Entropy", "FixedSubset", "Forgetting", "Full", "Glister", "GradMatch", "GraNd", "InfoBatch", "LeastConfidence",
           "Loss", "Margin", "Periodic", "Random", "RandomOnline", "RandomPB", "STRATEGIES", "ScoreBased", "SelectiveBackprop",
           "Strata", "Strategy", "make", "parameters"]
