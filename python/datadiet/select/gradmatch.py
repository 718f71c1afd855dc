"""GradMatch (Killamsetty et al. 2021): a weighted subset whose weighted gradient sum matches
the full training (or a validation) gradient, chosen by orthogonal matching pursuit
(``datadiet.ops.omp`` / ``omp_factored``).

Modes:

- ``"per_class"``: one OMP problem per class (budget ``ceil(k · n_c / N)``, so up to one more
  than k per class in total), all in one batched call; the target is the class's gradient sum
  (or its validation gradient sum);
- ``"per_batch"``: atoms are the mean gradients of fixed consecutive minibatches; OMP picks
  ``max(1, k // batch_size)`` whole batches and a chosen batch's weight goes to each of its
  samples (dense embeddings only);
- ``"global"``: one problem over all samples.

When OMP returns fewer atoms than the budget (tolerance met, no admissible atom left: none
correlates — positively — above the floor, or the support already spans the atoms; atoms
rejected as dependent or zeroed by the non-negative solve) the rest is filled with random
unselected samples of weight 1, as CORDS does — and the result says how many and why.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, cast

import torch

from datadiet.ops.omp import STOP_REASONS, OMPResult, omp, omp_factored
from datadiet.ops.weighted_sample import weighted_sample
from datadiet.select._budget import class_budgets, subset_size

MODES = ("per_class", "per_batch", "global")
EMBEDDINGS = ("bias", "per_class", "full")


def last_layer_embedding(errors: torch.Tensor, features: Optional[torch.Tensor] = None,
                         labels: Optional[torch.Tensor] = None, kind: str = "bias") -> torch.Tensor:
    """Dense per-sample last-layer gradients, as CORDS builds them (§2 of the notes):

    - ``"bias"``: ``e_i`` (``[N, C]``), the bias gradient;
    - ``"per_class"``: ``e_{i,y_i} · [1, h_i]`` (``[N, 1 + D]``), the label's bias entry and weight
      row — CORDS' per-class-per-gradient embedding, meant for ``mode="per_class"``;
    - ``"full"``: ``e_i ⊗ [h_i, 1]`` (``[N, C·(D+1)]``) — only for small problems; use
      ``gradmatch(errors=..., features=...)`` to keep it factorised.
    """
    if kind not in EMBEDDINGS:
        raise ValueError(f"datadiet.last_layer_embedding: kind must be one of {EMBEDDINGS}, got {kind!r}")
    if kind == "bias":
        return errors.float()
    if features is None or features.shape[0] != errors.shape[0]:
        raise ValueError(f"datadiet.last_layer_embedding: kind={kind!r} needs features [N, D] with N = "
                         f"{errors.shape[0]}")
    h = features.float()
    if kind == "per_class":
        if labels is None or labels.shape != (errors.shape[0],):
            raise ValueError(f"datadiet.last_layer_embedding: kind='per_class' needs labels [{errors.shape[0]}]")
        e_y = errors.float().gather(1, labels.long().unsqueeze(1))
        return torch.cat([e_y, e_y * h], 1)
    ht = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
    return (errors.float().unsqueeze(2) * ht.unsqueeze(1)).reshape(errors.shape[0], -1)


class GradMatchSelection(NamedTuple):
    """``indices`` int64 and ``weights`` float32 of the selected samples, OMP's picks first and the
    random fill (weight 1) last; per problem (each class, or the one global / per-batch problem):
    ``residual`` (‖target − Σ w g‖ / ‖target‖), ``found`` (samples OMP chose), ``iterations``,
    ``stop`` (why its solve ended, an index into ``datadiet.ops.omp.STOP_REASONS``) and ``rejected``
    (picks refused as dependent or raising OMP's objective ‖target − Σ w g‖² + λ‖w‖²); ``filled``: how many random samples
    were added because OMP found fewer than the budget, and ``fill_reasons`` why: for each stop
    reason, the problems that ended short of their budget with it, plus the atoms ``rejected``
    and ``dropped`` (zeroed by the non-negative solve) over those problems; per batch also
    ``batch_remainder``, the samples of a budget that is not a multiple of ``batch_size``."""

    indices: torch.Tensor
    weights: torch.Tensor
    residual: torch.Tensor
    found: torch.Tensor
    iterations: torch.Tensor
    filled: int
    stop: torch.Tensor
    rejected: torch.Tensor
    fill_reasons: dict[str, int]


def gradmatch(
    embedding: Optional[torch.Tensor] = None,
    *,
    errors: Optional[torch.Tensor] = None,
    features: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    fraction: Optional[float] = None,
    budget: Optional[int] = None,
    mode: str = "per_class",
    batch_size: int = 32,
    lam: float = 0.5,
    tol: float = 0.0,
    positive: bool = True,
    val_embedding: Optional[torch.Tensor] = None,
    val_errors: Optional[torch.Tensor] = None,
    val_features: Optional[torch.Tensor] = None,
    val_labels: Optional[torch.Tensor] = None,
    seed: int = 0,
    backend: str = "auto",
) -> GradMatchSelection:
    """Select ``fraction`` (or ``budget`` samples) of the data by gradient matching.

    Give the per-sample gradients either dense, ``embedding [N, d]`` (e.g. the bias-only
    ``p − onehot`` from ``ce_scores(..., return_embedding=True)``, or CORDS' per-class-per-gradient
    embedding), or factorised, ``errors [N, C]`` and ``features [N, D]`` (the full last layer,
    never materialised). ``labels [N]`` are needed for ``per_class``. A validation target is given
    the same way (``val_embedding`` or ``val_errors``/``val_features``, with ``val_labels`` for
    ``per_class``). CORDS defaults: ``lam=0.5`` per class, ``0`` per batch.
    """
    dense = embedding is not None
    if dense == (errors is not None or features is not None):
        raise ValueError("datadiet.gradmatch: pass embedding, or errors and features (not both)")
    if not dense and (errors is None or features is None):
        raise ValueError("datadiet.gradmatch: the factorised form needs both errors and features")
    n = cast(torch.Tensor, embedding if dense else errors).shape[0]
    if mode not in MODES:
        raise ValueError(f"datadiet.gradmatch: mode must be one of {MODES}, got {mode!r}")
    k = subset_size(n, fraction, budget, "gradmatch")
    has_val = val_embedding is not None or val_errors is not None or val_features is not None
    if has_val:
        _check_val_form(dense, val_embedding, val_errors, val_features)
    if mode == "per_class":
        return _per_class(embedding, errors, features, labels, k, lam, tol, positive, val_embedding, val_errors,
                          val_features, val_labels if has_val else None, has_val, seed, backend)
    if mode == "per_batch":
        if not dense:
            raise ValueError("datadiet.gradmatch: per_batch needs a dense embedding (a batch's mean gradient is "
                             "not a single outer product)")
        return _per_batch(cast(torch.Tensor, embedding), k, batch_size, lam, tol, positive, val_embedding, seed,
                          backend)
    if dense:
        target = cast(torch.Tensor, val_embedding if has_val else embedding).float().sum(0)
        res = omp(cast(torch.Tensor, embedding), target, k, lam=lam, positive=positive, tol=tol, backend=backend)
    else:
        factored_target = (cast(torch.Tensor, val_errors), cast(torch.Tensor, val_features)) if has_val else None
        res = omp_factored(cast(torch.Tensor, errors), cast(torch.Tensor, features), k, target=factored_target,
                           lam=lam, positive=positive, tol=tol, backend=backend)
    return _finish(n, [res.indices], [res.weights], res, k, seed, cast(torch.Tensor, embedding if dense else errors))


def _check_val_form(dense: bool, val_embedding: Optional[torch.Tensor], val_errors: Optional[torch.Tensor],
                    val_features: Optional[torch.Tensor]) -> None:
    """The validation gradients must come in the training gradients' form."""
    factored = val_errors is not None or val_features is not None
    if dense and (factored or val_embedding is None):
        raise ValueError("datadiet.gradmatch: the training gradients are a dense embedding, so the validation target "
                         "must be val_embedding (not val_errors / val_features)")
    if not dense and (val_embedding is not None or val_errors is None or val_features is None):
        raise ValueError("datadiet.gradmatch: the training gradients are factorised (errors, features), so the "
                         "validation target must be both val_errors and val_features (not val_embedding)")


def _check_labels(labels: Optional[torch.Tensor], n: int, name: str) -> torch.Tensor:
    if labels is None or labels.shape != (n,) or labels.dtype.is_floating_point:
        raise ValueError(f"datadiet.gradmatch: per_class needs integer {name} of shape [{n}], got "
                         f"{None if labels is None else (labels.dtype, tuple(labels.shape))}")
    return labels


def _group(labels: Optional[torch.Tensor], n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    labels = _check_labels(labels, n, name)
    order = torch.sort(labels.long(), stable=True).indices
    return order, labels.long()[order]


def _per_class(embedding: Optional[torch.Tensor], errors: Optional[torch.Tensor], features: Optional[torch.Tensor],
               labels: Optional[torch.Tensor], k: int, lam: float, tol: float, positive: bool,
               val_embedding: Optional[torch.Tensor], val_errors: Optional[torch.Tensor],
               val_features: Optional[torch.Tensor], val_labels: Optional[torch.Tensor], has_val: bool, seed: int,
               backend: str) -> GradMatchSelection:
    # As in gradmatch: embedding is given when dense, errors and features (and their validation
    # counterparts when has_val) otherwise.
    n = cast(torch.Tensor, embedding if embedding is not None else errors).shape[0]
    labels = _check_labels(labels, n, "labels")
    counts = class_counts(labels, int(labels.max()) + 1 if n else 0)
    budgets = class_budgets(counts, k)
    picks = class_picks(labels, budgets, embedding=embedding, errors=errors, features=features,
                        val_embedding=val_embedding, val_errors=val_errors, val_features=val_features,
                        val_labels=val_labels if has_val else None, lam=lam, tol=tol, positive=positive,
                        backend=backend)
    return finish_classes(n, picks, k, seed, cast(torch.Tensor, embedding if embedding is not None else errors))


def class_counts(labels: torch.Tensor, classes: int) -> list[int]:
    """Samples per class 0..classes-1; a class without samples is refused (per-class problems need
    one, and the ids must run 0..C-1)."""
    counts = torch.bincount(labels.long(), minlength=classes).tolist()
    if 0 in counts:
        empty = [c for c, count in enumerate(counts) if count == 0]
        raise ValueError(f"datadiet.gradmatch: classes {empty[:8]} have no samples; relabel to 0..C-1")
    return counts


class ClassPicks(NamedTuple):
    """OMP's answer for some classes' problems: ``classes`` (ascending class ids), per class its
    budget, its picks (rows of the given samples, -1-padded to the budget, in one tensor) and
    weights, and OMP's per-problem report (``res``)."""

    classes: list[int]
    budgets: list[int]
    picks: torch.Tensor
    weights: torch.Tensor
    res: OMPResult


def class_picks(labels: torch.Tensor, budgets: Sequence[int], *, embedding: Optional[torch.Tensor] = None,
                errors: Optional[torch.Tensor] = None, features: Optional[torch.Tensor] = None,
                val_embedding: Optional[torch.Tensor] = None, val_errors: Optional[torch.Tensor] = None,
                val_features: Optional[torch.Tensor] = None, val_labels: Optional[torch.Tensor] = None,
                lam: float = 0.5, tol: float = 0.0, positive: bool = True, backend: str = "auto") -> ClassPicks:
    """One OMP problem for each class present in ``labels`` (not necessarily all: a rank solving
    its share of the classes), with the budget ``budgets[class id]``, in one batched call; the
    target is the class's gradient sum, or of its rows of the validation split when
    ``val_labels`` is given. A class's answer depends only on its own rows and their order, so the
    classes may be solved together or apart (``finish_classes`` joins them)."""
    dense = embedding is not None
    n = cast(torch.Tensor, embedding if dense else errors).shape[0]
    order, sorted_labels = _group(labels, n, "labels")
    present = torch.unique_consecutive(sorted_labels)
    counts = torch.bincount(torch.searchsorted(present, sorted_labels), minlength=present.numel()).tolist()
    classes = present.tolist()
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    budget = [int(budgets[c]) for c in classes]
    if not classes:  # a rank that owns none of the classes
        none = torch.zeros(0, dtype=torch.int64, device=labels.device)
        return ClassPicks([], [], none, none.float(), OMPResult(none, none.float(), none.float(), none, none.float(),
                                                                none, none))
    identity = bool(torch.equal(order, torch.arange(n, device=order.device)))  # already grouped: no copy

    def grouped(rows: torch.Tensor, by: torch.Tensor, same: bool) -> torch.Tensor:
        return rows.float() if same else rows.float()[by]

    v_order = v_local = None
    v_offsets = [0]
    if val_labels is not None:
        m = cast(torch.Tensor, val_embedding if dense else val_errors).shape[0]
        v_order, v_sorted = _group(val_labels, m, "val_labels")
        v_local = torch.searchsorted(present, v_sorted).clamp_max(max(len(classes) - 1, 0))
        if m and (not classes or not bool(torch.equal(present[v_local], v_sorted))):
            raise ValueError("datadiet.gradmatch: val_labels hold classes that the training labels do not")
        for c in torch.bincount(v_local, minlength=len(classes)).tolist():
            v_offsets.append(v_offsets[-1] + c)
    if dense:
        atoms = grouped(cast(torch.Tensor, embedding), order, identity)
        targets = torch.zeros(len(classes), atoms.shape[1], device=atoms.device)
        if v_order is not None:
            targets.index_add_(0, cast(torch.Tensor, v_local), cast(torch.Tensor, val_embedding).float()[v_order])
        else:
            targets.index_add_(0, torch.searchsorted(present, sorted_labels), atoms)
        res = omp(atoms, targets, offsets=offsets, budgets=budget, lam=lam, positive=positive, tol=tol,
                  backend=backend)
    else:
        e = grouped(cast(torch.Tensor, errors), order, identity)
        h = grouped(cast(torch.Tensor, features), order, identity)
        target: Optional[tuple[torch.Tensor, torch.Tensor, list[int]]] = None
        if v_order is not None:
            target = (cast(torch.Tensor, val_errors).float()[v_order], cast(torch.Tensor, val_features).float()[v_order],
                      v_offsets)
        res = omp_factored(e, h, offsets=offsets, budgets=budget, target=target, lam=lam, positive=positive, tol=tol,
                           backend=backend)
    picked = torch.where(res.indices >= 0, order[res.indices.clamp_min(0)], res.indices)
    return ClassPicks(classes, budget, picked, res.weights, res)


def finish_classes(n: int, picks: ClassPicks, k: int, seed: int, like: torch.Tensor) -> GradMatchSelection:
    """The selection from every class's picks (rows of the ``n`` samples): OMP's picks in class
    order, then a seeded random fill up to ``k`` (``like``: a tensor on the device to fill on)."""
    parts_i = list(torch.split(picks.picks, picks.budgets))
    parts_w = list(torch.split(picks.weights, picks.budgets))
    return _finish(n, parts_i, parts_w, picks.res, k, seed, like)


def _relative(res: OMPResult) -> torch.Tensor:
    return res.residual / res.target_norm.clamp_min(1e-30)


def _per_batch(embedding: torch.Tensor, k: int, batch_size: int, lam: float, tol: float, positive: bool,
               val_embedding: Optional[torch.Tensor], seed: int, backend: str) -> GradMatchSelection:
    n = embedding.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"datadiet.gradmatch: batch_size must be an int in [1, {n}], got {batch_size!r}")
    batches = math.ceil(n / batch_size)
    batch_of = torch.arange(n, device=embedding.device) // batch_size
    sizes = torch.bincount(batch_of, minlength=batches).float()
    means = torch.zeros(batches, embedding.shape[1], device=embedding.device).index_add_(
        0, batch_of, embedding.float()) / sizes.unsqueeze(1)
    target = (val_embedding if val_embedding is not None else embedding).float().sum(0)
    kb = min(batches, max(1, k // batch_size))  # whole batches; the random fill tops up the rest
    res = omp(means, target, kb, lam=lam, positive=positive, tol=tol, backend=backend)
    chosen = res.indices[res.indices >= 0]
    members = [torch.arange(int(b) * batch_size, min(n, (int(b) + 1) * batch_size), device=embedding.device)
               for b in chosen.tolist()]
    indices = torch.cat(members) if members else torch.zeros(0, dtype=torch.long, device=embedding.device)
    weights = torch.cat([torch.full((m.numel(),), float(w), device=embedding.device)
                         for m, w in zip(members, res.weights[res.indices >= 0].tolist())]) if members else \
        torch.zeros(0, device=embedding.device)
    found = torch.tensor([indices.numel()])
    fill = _fill(n, indices, k - indices.numel(), seed, embedding.device)
    ones = torch.ones(fill.numel(), device=weights.device)
    atoms = torch.tensor([int((res.indices >= 0).sum())])
    sel = _selection(torch.cat([indices, fill]), torch.cat([weights, ones]), res, found, fill.numel(), atoms,
                     torch.tensor([kb]))
    remainder = k - kb * batch_size  # samples no whole batch can cover
    if remainder > 0 and fill.numel():
        sel.fill_reasons["batch_remainder"] = min(remainder, fill.numel())
    return sel


def _fill(n: int, chosen: torch.Tensor, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``count`` random samples not in ``chosen`` (uniform without replacement, seeded)."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    free = torch.ones(n, device=device)
    free[chosen] = 0
    return weighted_sample(free, count, seed=seed)


def _finish(n: int, parts_i: Sequence[torch.Tensor], parts_w: Sequence[torch.Tensor], res: OMPResult, k: int, seed: int,
            like: torch.Tensor) -> GradMatchSelection:
    """Concatenates the problems' picks (dropping the -1 padding) and fills up to k at random."""
    found = torch.tensor([int((p >= 0).sum()) for p in parts_i])
    indices = torch.cat([p[p >= 0] for p in parts_i])
    weights = torch.cat([w[p >= 0] for p, w in zip(parts_i, parts_w)])
    fill = _fill(n, indices, k - indices.numel(), seed, like.device)
    ones = torch.ones(fill.numel(), device=weights.device)
    budgets = torch.tensor([p.numel() for p in parts_i])
    return _selection(torch.cat([indices, fill]), torch.cat([weights, ones]), res, found, fill.numel(), found, budgets)


def _selection(indices: torch.Tensor, weights: torch.Tensor, res: OMPResult, found: torch.Tensor, filled: int,
               atoms: torch.Tensor, budgets: torch.Tensor) -> GradMatchSelection:
    """The selection with OMP's per-problem report (``atoms`` found of ``budgets`` per problem)."""
    stop, rejected, iterations = (t.reshape(-1).cpu() for t in (res.stop, res.rejected, res.iterations))
    short = atoms < budgets
    reasons = {name: int((short & (stop == code)).sum()) for code, name in enumerate(STOP_REASONS)}
    reasons = {name: count for name, count in reasons.items() if count}
    if bool(short.any()):
        reasons["rejected"] = int(rejected[short].sum())
        reasons["dropped"] = int((iterations - rejected - atoms)[short].sum())
    return GradMatchSelection(indices, weights, _relative(res).reshape(-1), found, res.iterations.reshape(-1), filled,
                              res.stop.reshape(-1), res.rejected.reshape(-1), reasons)
