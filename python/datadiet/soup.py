"""Model soups (Wortsman et al.; used by the difficulty ensembles and LiPT):
uniform, streaming and greedy (optionally interpolated) averages of models that share an
architecture, on ``nn.Module``s or state dicts, over the fused ``datadiet.ops.average_`` /
``lerp_`` kernels.

Buffers: BatchNorm running statistics are averaged like parameters and ``num_batches_tracked``
gets the rounded mean (the ops' integer rule). Averaged statistics are not the statistics of the
averaged weights; pass ``bn_loader`` to re-estimate them on data instead
(``torch.optim.swa_utils.update_bn``) — recommended before evaluating a soup of models that were
trained apart.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from datadiet.ops.merge import average_, lerp_

Ingredient = Union[nn.Module, dict]


def _state(x: Ingredient) -> dict:
    if isinstance(x, nn.Module):
        return x.state_dict()
    if isinstance(x, dict):
        return x
    raise TypeError(f"datadiet.soup: an ingredient must be an nn.Module or a state dict, got {type(x).__name__}")


def _tensors(state: dict, keys: list[str], what: str) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in state]
    extra = [k for k in state if k not in keys]
    if missing or extra:
        raise ValueError(f"datadiet.soup: {what} does not match the first ingredient's keys: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    return [state[k] for k in keys]


def _empty_like(first: Ingredient) -> tuple[Ingredient, dict]:
    """A copy of the first ingredient to hold the soup, and its state dict (live tensors)."""
    if isinstance(first, nn.Module):
        soup = copy.deepcopy(first)
        return soup, soup.state_dict()
    soup = {k: v.clone() for k, v in first.items()}
    return soup, soup


def _finish(soup: Ingredient, bn_loader, device) -> Ingredient:
    if bn_loader is not None:
        if not isinstance(soup, nn.Module):
            raise TypeError("datadiet.soup: bn_loader re-estimates BatchNorm statistics and needs nn.Module "
                            "ingredients")
        torch.optim.swa_utils.update_bn(bn_loader, soup, device=device)
    return soup


def uniform_soup(ingredients: Sequence[Ingredient], weights: Optional[Sequence[float]] = None, *,
                 bn_loader: Optional[Iterable] = None, device=None) -> Ingredient:
    """The (weighted) mean of the ingredients' parameters and buffers, one fused pass.

    Returns a new module (a copy of the first ingredient) or a new state dict, like the inputs.
    ``weights`` are normalised to sum to one. ``bn_loader``: re-estimate BatchNorm statistics.
    """
    if not ingredients:
        raise ValueError("datadiet.uniform_soup: no ingredients")
    states = [_state(x) for x in ingredients]
    keys = list(states[0].keys())
    w = [1.0] * len(states) if weights is None else [float(v) for v in weights]
    if len(w) != len(states) or not sum(w) > 0:
        raise ValueError(f"datadiet.uniform_soup: need {len(states)} weights with a positive sum, got {weights}")
    soup, state = _empty_like(ingredients[0])
    sources = [_tensors(s, keys, f"ingredient {i}") for i, s in enumerate(states)]
    average_([state[k] for k in keys], sources, [v / sum(w) for v in w])
    return _finish(soup, bn_loader, device)


class RunningSoup:
    """A uniform soup folded one model at a time (``add``), holding one model's worth of memory:
    after n models the soup is their mean, ``soup ← soup + (θ − soup)/(n + 1)``."""

    def __init__(self) -> None:
        self.count = 0
        self.soup: Optional[Ingredient] = None
        self._keys: list[str] = []

    def add(self, ingredient: Ingredient) -> None:
        state = _state(ingredient)
        if self.soup is None:
            self.soup, _ = _empty_like(ingredient)
            self._keys = list(state.keys())
        else:
            soup = _state(self.soup)
            lerp_([soup[k] for k in self._keys], _tensors(state, self._keys, "the ingredient"), 1.0 / (self.count + 1))
        self.count += 1

    def result(self, *, bn_loader: Optional[Iterable] = None, device=None) -> Ingredient:
        if self.soup is None:
            raise ValueError("datadiet.RunningSoup: no ingredient was added")
        return _finish(self.soup, bn_loader, device)


@dataclass
class GreedySoup:
    """``soup``: the merged model; ``score``: its held-out metric; ``accepted``: ingredient indices in
    the soup (in merge order); ``history``: per candidate ``(index, alpha tried best, score, accepted)``."""

    soup: Ingredient
    score: float
    accepted: list[int]
    history: list[tuple[int, float, float, bool]] = field(default_factory=list)


def greedy_soup(ingredients: Sequence[Ingredient], evaluate: Callable[[Ingredient], float], *,
                alphas: Optional[Sequence[float]] = None, bn_loader: Optional[Iterable] = None,
                device=None) -> GreedySoup:
    """Greedy soup: rank the ingredients by ``evaluate`` (a held-out metric, higher is better), start
    from the best, and merge each next candidate only if the metric strictly improves.

    Without ``alphas`` a candidate enters as an equal member (``soup·n/(n+1) + θ/(n+1)``, the
    model-soups rule). With ``alphas`` (a grid in [0, 1], as in LiPT) each candidate is tried at
    every ratio ``soup·(1 − α) + θ·α`` and the best one is kept if it beats the soup.
    ``bn_loader`` re-estimates BatchNorm statistics of every evaluated model (modules only).
    """
    if not ingredients:
        raise ValueError("datadiet.greedy_soup: no ingredients")
    if alphas is not None and not all(0.0 <= float(a) <= 1.0 for a in alphas):
        raise ValueError(f"datadiet.greedy_soup: alphas must lie in [0, 1], got {list(alphas)}")
    keys = list(_state(ingredients[0]).keys())

    def score(candidate: Ingredient) -> float:
        return float(evaluate(_finish(candidate, bn_loader, device)))

    scores = [score(x) for x in ingredients]
    unordered = [i for i, s in enumerate(scores) if math.isnan(s)]
    if unordered:  # NaN ranks nowhere: the greedy order would be arbitrary
        raise ValueError(f"datadiet.greedy_soup: evaluate returned NaN for ingredient {unordered[0]}; it must "
                         "return a comparable number (higher is better)")
    order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
    soup, state = _empty_like(ingredients[order[0]])
    best, accepted, history = scores[order[0]], [order[0]], []
    for i in order[1:]:
        theta = _tensors(_state(ingredients[i]), keys, f"ingredient {i}")
        trials = [1.0 / (len(accepted) + 1)] if alphas is None else [float(a) for a in alphas]
        top_alpha, top_score, top_candidate = None, -float("inf"), None
        for alpha in trials:
            candidate, cstate = _empty_like(soup)
            lerp_([cstate[k] for k in keys], theta, alpha)
            s = score(candidate)
            if s > top_score:
                top_alpha, top_score, top_candidate = alpha, s, candidate
        taken = top_score > best
        history.append((i, top_alpha, top_score, taken))
        if taken:
            soup, best = top_candidate, top_score
            accepted.append(i)
    return GreedySoup(soup, best, accepted, history)
