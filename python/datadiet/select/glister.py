"""GLISTER (Killamsetty et al. 2021b): greedy selection that maximises the validation
log-likelihood under a one-step Taylor approximation, on last-layer gradients.

Each candidate's gain is ``⟨g_i, g_val⟩`` with ``g_i = e_i ⊗ h̃_i`` the training sample's gradient
and ``g_val`` the summed validation-loss gradient, both w.r.t. the final linear layer
(h̃ = [h, 1]). After a pick, the last layer takes one step ``−eta·g_j`` and the validation
gradient is recomputed there: the validation logits move by ``−eta·(h̃_v·h̃_j)·e_j`` — rank one,
so no weight matrix is formed — and ``g_val = E_vᵀ H̃_v`` with ``E_v = softmax(z_v) − onehot``.
Gains are ``rowsum((E g_val) ⊙ H̃)``: the factorised algebra, never an ``N × C·(D+1)`` matrix.

Variants: ``"naive"`` greedy scores every unselected sample each step; ``"stochastic"`` greedy
(Mirzasoleiman et al.) scores a seeded random ``ceil((N/k)·ln(100))`` of them. Weights are 1.

``refresh`` = b: the validation gradient is recomputed after every b picks instead of every pick
(b = 1 is the exact greedy above). Between refreshes the gains are those of the last refresh, so
the b picks of a round are the b best of b disjoint candidate draws (stochastic) or the b best
gains (naive), and the round's b steps move the validation logits at once:
``z −= eta · H̃_v (H̃_Bᵀ E_B)`` — a [D+1, C] product, then one V × (D+1) × C GEMM, whatever b.
The cost is about (k / b) · 2 · V·C·(D+1) plus the candidates' gains, with no host sync per
pick. The default b = ceil(k / 64) keeps the greedy exact up to k = 64 picks and bounds the
refreshes at 64 beyond (on trained-like inputs 8 refreshes were within 0.01% of the exact
greedy's held-out loss).

The validation gradient is summed in blocks of ``VAL_BLOCK`` validation rows, block after
block, so that it is the same sum whether one process holds every block or each holds some.

Sharded (``shard``, e.g. one share of the rows per rank): each process holds only its rows of
``errors`` / ``features`` (``shard.rows``: their ids among ``shard.total``) and its validation
blocks (``shard.val_rows``: the ids of its validation rows among ``shard.val_total``, whole
blocks, ascending). The candidates are drawn from the global free set with the same seed
everywhere; each process scores the candidates it holds (−inf for the others) and an elementwise
max over the processes gives every gain, exactly; the picked rows and the blocks' gradient sums
travel the same way (zeros elsewhere, summed, exact), then every process adds the blocks in
order and updates the logits of its validation rows. Every process takes the picks one process
holding everything would, up to the rounding of the matrix products (equal in our tests).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from datadiet.ops.weighted_sample import weighted_sample
from datadiet.select._budget import subset_size

VARIANTS = ("stochastic", "naive")
VAL_BLOCK = 4096  # validation rows per block of the validation gradient's sum


class Shard(NamedTuple):
    """This process's share of the rows: ``rows`` (int64, its training rows' ids in [0,
    ``total``)), ``val_rows`` (its validation rows' ids in [0, ``val_total``): whole blocks of
    ``VAL_BLOCK``, ascending) and ``reduce(tensor, op)``, an in-place elementwise ``"max"`` /
    ``"sum"`` over the processes (``torch.distributed.all_reduce``)."""

    rows: torch.Tensor
    total: int
    val_rows: torch.Tensor
    val_total: int
    reduce: Callable[[torch.Tensor, str], None]


class GlisterSelection(NamedTuple):
    """``indices`` in pick order, ``weights`` (ones) and each pick's ``gains`` ⟨g_i, g_val⟩."""

    indices: torch.Tensor
    weights: torch.Tensor
    gains: torch.Tensor


def glister(
    errors: torch.Tensor,
    features: torch.Tensor,
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    val_features: torch.Tensor,
    *,
    fraction: float | None = None,
    budget: int | None = None,
    eta: float = 0.01,
    variant: str = "stochastic",
    seed: int = 0,
    refresh: int | None = None,
    shard: Optional[Shard] = None,
) -> GlisterSelection:
    """Select ``fraction`` (or ``budget`` samples) of the training set.

    Args:
        errors: ``[N, C]`` training ``p − onehot`` at the current model
            (``ce_scores(..., return_embedding=True).embedding``); features: ``[N, D]`` inputs of
            the final linear layer.
        val_logits: ``[V, C]`` validation logits at the current model; val_labels ``[V]``;
            val_features ``[V, D]``.
        eta: the step size of the Taylor update (the learning rate).
        refresh: picks between recomputations of the validation gradient (module docstring);
            None: ``ceil(k / 64)``, 1: the exact greedy.
        shard: the rows given are this process's share (module docstring); every process calls
            with its share and gets the same selection.
    """
    _check(errors, features, val_logits, val_labels, val_features, variant)
    n = errors.shape[0] if shard is None else shard.total
    k = subset_size(n, fraction, budget, "glister")
    if refresh is None:
        refresh = max(1, math.ceil(k / 64))
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
        raise ValueError(f"datadiet.glister: refresh must be an int >= 1 (picks per validation-gradient refresh), "
                         f"got {refresh!r}")
    e = errors.float()
    ht = torch.cat([features.float(), features.new_ones(e.shape[0], 1, dtype=torch.float32)], 1)
    hv = torch.cat([val_features.float(), val_features.new_ones(val_features.shape[0], 1, dtype=torch.float32)], 1)
    z = val_logits.float().clone()
    onehot = torch.nn.functional.one_hot(val_labels.long(), z.shape[1]).float()
    rows = _Rows(e, ht, shard)
    blocks = _ValBlocks(hv, shard)
    free = torch.ones(n, dtype=torch.bool, device=e.device)
    sample = min(n, math.ceil(n / k * math.log(100))) if variant == "stochastic" else n
    picks = torch.empty(k, dtype=torch.int64, device=e.device)
    gains = torch.empty(k, device=e.device)
    done = 0
    for step in range(math.ceil(k / refresh)):
        b = min(refresh, k - done)
        g_val = blocks.gradient(z.softmax(1) - onehot)  # [C, D+1], summed validation gradient
        left = free.nonzero().squeeze(1)
        if sample * b <= left.numel() and sample < left.numel():
            # b disjoint draws of `sample` candidates (one draw when b = 1), the best of each
            drawn = left[weighted_sample(torch.ones(left.numel(), device=e.device), sample * b, seed=seed + step)]
            candidates = drawn.view(b, sample)
            gain = rows.gains(drawn, g_val).view(b, sample)
            best = gain.argmax(1)
            chosen, won = candidates.gather(1, best[:, None]).squeeze(1), gain.gather(1, best[:, None]).squeeze(1)
        else:
            # every unselected sample scored (naive; stochastic once fewer than b draws are left):
            # the b best. b = 1 in one product, as the exact greedy always has; else in chunks, as
            # e[left] may be the whole table
            parts = [left] if b == 1 else torch.split(left, 1 << 16)
            gain = torch.cat([rows.gains(part, g_val) for part in parts])
            best = gain.argmax().reshape(1) if b == 1 else torch.topk(gain, b, sorted=True).indices
            chosen, won = left[best], gain[best]
        picks[done:done + b], gains[done:done + b] = chosen, won
        free[chosen] = False
        e_b, ht_b = rows.take(chosen)
        if b == 1:  # one step −eta·g_j on the last layer
            z -= eta * (hv @ ht_b[0]).unsqueeze(1) * e_b[0].unsqueeze(0)
        else:  # the round's b steps at once
            z -= eta * (hv @ (ht_b.T @ e_b))
        done += b
    return GlisterSelection(picks, torch.ones(k, device=e.device), gains)


def val_block_owner(ids: torch.Tensor, processes: int) -> torch.Tensor:
    """The process each validation row goes to when sharding: block b of ``VAL_BLOCK`` rows to
    process b mod ``processes``."""
    return (ids // VAL_BLOCK) % processes


class _ValBlocks:
    """The validation gradient E_vᵀ H̃_v summed block by block (module docstring)."""

    def __init__(self, hv: torch.Tensor, shard: Optional[Shard]):
        self.hv, self.shard = hv, shard
        ids = torch.arange(hv.shape[0], device=hv.device) if shard is None else shard.val_rows.to(hv.device)
        total = hv.shape[0] if shard is None else shard.val_total
        if ids.numel() != hv.shape[0] or (ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all())):
            raise ValueError("datadiet.glister: shard.val_rows must name each validation row given, ascending")
        self.count = math.ceil(total / VAL_BLOCK)
        block = ids // VAL_BLOCK
        mine = torch.unique_consecutive(block).tolist()
        sizes = torch.bincount(block, minlength=self.count).tolist() if ids.numel() else []
        whole = [min(VAL_BLOCK, total - b * VAL_BLOCK) for b in mine]
        if [sizes[b] for b in mine] != whole:
            raise ValueError(f"datadiet.glister: a shard's validation rows must be whole blocks of {VAL_BLOCK}")
        starts = [0]
        for b in mine:
            starts.append(starts[-1] + sizes[b])
        self.blocks = [(b, slice(starts[j], starts[j + 1])) for j, b in enumerate(mine)]

    def gradient(self, residual: torch.Tensor) -> torch.Tensor:
        """Σ_blocks (E_v,blockᵀ H̃_v,block), the blocks added in order (each block's product made
        where its rows are, then, sharded, every block's sum joined on every process)."""
        total = residual.new_zeros((residual.shape[1], self.hv.shape[1]))
        if self.shard is None:
            for j, (_, rows) in enumerate(self.blocks):
                part = residual[rows].T @ self.hv[rows]
                total = part if j == 0 else total.add_(part)
            return total
        every = residual.new_zeros((self.count, residual.shape[1], self.hv.shape[1]))
        for b, rows in self.blocks:
            every[b] = residual[rows].T @ self.hv[rows]
        self.shard.reduce(every, "sum")  # each block's sum from its process, zeros elsewhere: exact
        for j in range(self.count):
            total = every[j].clone() if j == 0 else total.add_(every[j])
        return total


class _Rows:
    """The training rows' gains and rows by global id, whole or sharded (module docstring)."""

    def __init__(self, e: torch.Tensor, ht: torch.Tensor, shard: Optional[Shard]):
        self.e, self.ht, self.shard = e, ht, shard
        if shard is not None:
            self.local = torch.full((shard.total,), -1, dtype=torch.int64, device=e.device)
            self.local[shard.rows.to(e.device)] = torch.arange(shard.rows.numel(), device=e.device)

    def gains(self, ids: torch.Tensor, g_val: torch.Tensor) -> torch.Tensor:
        """⟨g_i, g_val⟩ of the samples ``ids``: rowsum((E g_val) ⊙ H̃)."""
        if self.shard is None:
            return ((self.e[ids] @ g_val) * self.ht[ids]).sum(1)
        at = self.local[ids]
        held = at >= 0
        out = torch.full((ids.numel(),), -math.inf, device=self.e.device)
        out[held] = ((self.e[at[held]] @ g_val) * self.ht[at[held]]).sum(1)
        self.shard.reduce(out, "max")  # each id held by one process: its gain, exactly
        return out

    def take(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of E and H̃ of the samples ``ids``, on every process."""
        if self.shard is None:
            return self.e[ids], self.ht[ids]
        at = self.local[ids]
        held = at >= 0
        e_b = self.e.new_zeros((ids.numel(), self.e.shape[1]))
        ht_b = self.ht.new_zeros((ids.numel(), self.ht.shape[1]))
        e_b[held], ht_b[held] = self.e[at[held]], self.ht[at[held]]
        joined = torch.cat([e_b, ht_b], 1)
        self.shard.reduce(joined, "sum")  # zeros elsewhere: each row arrives exactly
        return joined[:, :self.e.shape[1]], joined[:, self.e.shape[1]:]


def _check(errors: torch.Tensor, features: torch.Tensor, val_logits: torch.Tensor, val_labels: torch.Tensor,
           val_features: torch.Tensor, variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"datadiet.glister: variant must be one of {VARIANTS}, got {variant!r}")
    if errors.dim() != 2 or features.dim() != 2 or features.shape[0] != errors.shape[0]:
        raise ValueError(f"datadiet.glister: errors [N, C] and features [N, D] must share N, got "
                         f"{tuple(errors.shape)} and {tuple(features.shape)}")
    v, c = val_logits.shape if val_logits.dim() == 2 else (-1, -1)
    if c != errors.shape[1] or val_labels.shape != (v,) or val_features.shape != (v, features.shape[1]):
        raise ValueError(f"datadiet.glister: need val_logits [V, {errors.shape[1]}], val_labels [V] and "
                         f"val_features [V, {features.shape[1]}], got {tuple(val_logits.shape)}, "
                         f"{tuple(val_labels.shape)} and {tuple(val_features.shape)}")
    if v and (int(val_labels.min()) < 0 or int(val_labels.max()) >= c):
        raise ValueError(f"datadiet.glister: val_labels must be class indices in [0, {c})")
