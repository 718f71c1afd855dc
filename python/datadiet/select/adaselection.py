"""AdaSelection: per-minibatch selection that mixes candidate methods and learns how
much to trust each from the training loss it sees.

RECONSTRUCTION. The paper's equations did not survive in any copy we could find; this is our
reconstruction, set out below, and every constant is a parameter:

- Eq. 2, each method m gives an importance ``s_m`` (a distribution over the batch of n; losses
  normalised by the batch mean first, ``l~ = l / mean(l)``): ``uniform`` 1/n; ``big_loss``
  softmax(l~/τ); ``small_loss`` softmax(−l~/τ); ``grad_norm`` g/Σg with g the per-sample output
  gradient norm (‖p − y‖ for cross-entropy; √l when not given — ``|ŷ − y|`` up to a constant for the
  squared error); ``adaboost`` (Eq. 1) multi-class SAMME inside the batch, ε = clip(mean(wrong),
  δ, 1 − δ), α = ln((1 − ε)/ε) + ln(K − 1), a ∝ exp(α·wrong) — or, without classes (regression),
  AdaBoost.R2: L = l / max(l), ε = clip(mean(L), δ, 1 − δ), a ∝ (ε/(1 − ε))^(1 − L);
  ``coreset1`` 1/k on the ceil(k/2) largest and floor(k/2) smallest losses; ``coreset2`` 1/k on
  the k losses closest to the batch mean.
- Eq. 3, reward: r_m = c_m · (L̄_{t−1} − L̄_t) / L̄_{t−1}, with c_m the mass method m put on the
  samples trained at step t − 1 and L̄ an EMA (``ema``) of the batch-mean loss of the selection
  passes (the loss after step t − 1 is seen on batch t).
- Eq. 4, curriculum: d_m = (l̄ − Σ_i s_{m,i} l_i) / l̄ (positive for a method preferring easy
  samples), κ(t) = 1 − 2t/T with t/T the training progress, r~_m = r_m + λ κ d_m.
- Exponentiated gradient: w_m ← w_m · exp(η r~_m), renormalised; w starts uniform.
- Eq. 5–6: π = Σ_m w_m s_m; keep the top k = ceil(ρ n) of π (ties to the lower index) or, with
  ``draw=True``, k drawn without replacement ∝ π from a seeded counter-based generator.

A non-finite loss (a diverged sample) counts as the batch's largest finite one.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch

from datadiet._seeds import derive_seed
from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample

METHODS = ("uniform", "big_loss", "small_loss", "grad_norm", "adaboost", "coreset1", "coreset2")
FULL_SUPPORT = frozenset({"uniform", "big_loss", "small_loss", "adaboost"})  # importance > 0 on every sample


def importance(method: str, losses: torch.Tensor, k: int, *, grad_norm: Optional[torch.Tensor] = None,
               wrong: Optional[torch.Tensor] = None, num_classes: Optional[int] = None, tau: float = 1.0,
               delta: float = 1e-3) -> torch.Tensor:
    """Method ``method``'s importance over the batch (float32 [n], sums to 1); see the module
    docstring. ``wrong`` (bool [n]) and ``num_classes`` switch AdaBoost to its SAMME form."""
    n = losses.numel()
    losses = losses.float()
    if method == "uniform":
        return torch.full_like(losses, 1.0 / n)
    scaled = losses / losses.mean().clamp_min(1e-12)
    if method == "big_loss":
        return torch.softmax(scaled / tau, 0)
    if method == "small_loss":
        return torch.softmax(-scaled / tau, 0)
    if method == "grad_norm":
        g = (grad_norm.float() if grad_norm is not None else losses.clamp_min(0).sqrt())
        total = g.sum()
        return torch.where(total > 0, g / torch.where(total > 0, total, 1.0), torch.full_like(losses, 1.0 / n))
    if method == "adaboost":
        if wrong is not None:
            miss = wrong.float()
            eps = miss.mean().clamp(delta, 1 - delta)
            alpha = torch.log((1 - eps) / eps) + math.log(max(num_classes or 2, 2) - 1)
            a = torch.exp(alpha * miss)
        else:
            rel = losses / losses.max().clamp_min(1e-12)
            eps = rel.mean().clamp(delta, 1 - delta)
            a = (eps / (1 - eps)) ** (1 - rel)
        return a / a.sum()
    if method in ("coreset1", "coreset2"):
        s = torch.zeros_like(losses)
        if method == "coreset1":
            big = topk_select(losses, math.ceil(k / 2))
            rest = losses.clone()
            rest[big] = math.inf  # the smallest of the others (losses are finite here)
            small = topk_select(rest, k // 2, largest=False) if k // 2 else big[:0]
            s[torch.cat([big, small])] = 1.0 / k
        else:
            s[topk_select((losses - losses.mean()).abs(), k, largest=False)] = 1.0 / k
        return s
    raise ValueError(f"AdaSelection: unknown method {method!r}; choose from {METHODS}")


def _finite(losses: torch.Tensor) -> torch.Tensor:
    """A non-finite loss (a diverged sample) as the batch's largest finite one (0 if none is)."""
    finite = torch.isfinite(losses)
    top = torch.where(finite, losses, -math.inf).max()
    top = torch.where(torch.isfinite(top), top, 0.0)
    return torch.where(finite | (losses == -math.inf), torch.where(finite, losses, 0.0), top)


class AdaSelector:
    """The state of one AdaSelection run: method weights, the loss EMA and what the last step
    trained. ``select(losses, progress, ...)`` first rewards the previous step's choice from the
    change of the loss, then returns the indices to train on (int64 [k])."""

    def __init__(self, methods: Iterable[str] = ("big_loss", "small_loss", "uniform"), *, keep: float = 0.5,
                 eta: float = 0.1, tau: float = 1.0, lam: float = 0.0, ema: float = 0.9, delta: float = 1e-3,
                 draw: bool = False, num_classes: Optional[int] = None, seed: int = 0) -> None:
        methods = tuple(methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown or len(set(methods)) != len(methods):
            raise ValueError(f"AdaSelection: methods must be distinct names from {METHODS}, got {list(methods)}")
        checks = (("keep", keep, 0.0, 1.0, False), ("eta", eta, 0.0, math.inf, True), ("tau", tau, 0.0, math.inf, False),
                  ("lam", lam, 0.0, math.inf, True), ("ema", ema, 0.0, 1.0, True), ("delta", delta, 0.0, 0.5, False))
        if not isinstance(draw, bool):
            raise ValueError(f"AdaSelection: draw must be True or False, got {draw!r}")
        for name, value, lo, hi, closed in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    (lo <= value if closed else lo < value) and value <= hi):
                raise ValueError(f"AdaSelection: {name} must be in {'[' if closed else '('}{lo}, {hi}], got {value!r}")
        self.methods, self.keep, self.eta, self.tau, self.lam = methods, float(keep), float(eta), float(tau), float(lam)
        self.ema, self.delta, self.draw, self.num_classes, self.seed = float(ema), float(delta), draw, num_classes, seed
        self.weights = torch.full((len(methods),), 1.0 / len(methods), dtype=torch.float64)
        self.mean_loss: Optional[torch.Tensor] = None  # the EMA L̄ (float64, on the losses' device)
        self.credit: Optional[torch.Tensor] = None  # c_m of the last step
        self.steps = 0

    def select(self, losses: torch.Tensor, progress: float = 0.0, *, grad_norm: Optional[torch.Tensor] = None,
               wrong: Optional[torch.Tensor] = None) -> torch.Tensor:
        if losses.dim() != 1 or losses.numel() == 0:
            raise ValueError(f"AdaSelection: losses must be a non-empty 1-D per-sample vector, got shape "
                             f"{tuple(losses.shape)}")
        losses = _finite(losses.float())
        n = losses.numel()
        k = max(1, math.ceil(self.keep * n))
        # Everything below stays on the losses' device: no host synchronisation per batch.
        batch_mean = losses.mean().double()
        previous = self.mean_loss
        self.mean_loss = batch_mean if previous is None else self.ema * previous + (1 - self.ema) * batch_mean
        scores = torch.stack([importance(m, losses, k, grad_norm=grad_norm, wrong=wrong, num_classes=self.num_classes,
                                         tau=self.tau, delta=self.delta) for m in self.methods]).double()
        self.weights = self.weights.to(losses.device)
        reward = torch.zeros(len(self.methods), dtype=torch.float64, device=losses.device)
        if self.credit is not None and previous is not None:  # no credit after a zero loss (as with none)
            change = self.credit.to(reward.device) * (previous - self.mean_loss) / torch.where(previous != 0, previous, 1.0)
            reward += torch.where(previous != 0, change, 0.0)
        if self.lam:
            kappa = 1.0 - 2.0 * min(max(progress, 0.0), 1.0)
            preferred = scores @ losses.double()
            reward += self.lam * kappa * (batch_mean - preferred) / batch_mean.clamp_min(1e-12)
        self.weights = self.weights * torch.exp(self.eta * reward)
        self.weights /= self.weights.sum()
        combined = (self.weights @ scores).float()
        if self.draw:
            # with a full-support method every entry is meant to be positive: floored at float32's
            # smallest normal (against underflow), so no value check (a host sync) is needed
            full = bool(FULL_SUPPORT.intersection(self.methods))
            floor = torch.finfo(torch.float32).tiny if full else 0.0
            picks = weighted_sample(combined.clamp_min(floor), k, seed=derive_seed(self.seed, self.steps),
                                    check_values=not full)
        else:
            picks = topk_select(combined, k)
        self.credit = scores[:, picks].sum(1)
        self.steps += 1
        return picks

    def state_dict(self) -> dict[str, Any]:
        mean_loss = None if self.mean_loss is None else float(self.mean_loss)  # float64: exact
        return {"weights": self.weights.cpu().clone(), "mean_loss": mean_loss, "steps": self.steps,
                "credit": None if self.credit is None else self.credit.cpu().clone(), "methods": list(self.methods)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["methods"]) != list(self.methods):
            raise ValueError(f"AdaSelection: state of methods {state['methods']}, this selector has "
                             f"{list(self.methods)}")
        self.weights, self.steps = state["weights"].clone(), int(state["steps"])
        self.mean_loss = None if state["mean_loss"] is None else torch.tensor(state["mean_loss"], dtype=torch.float64)
        self.credit = None if state["credit"] is None else state["credit"].clone()
