"""Reference ``ce_scores`` in plain PyTorch: readable formulas, same policies as the kernels.

It materialises ``N x C`` temporaries and is slow; use it as an oracle
(``compute_dtype=torch.float64``) or as the portable fallback (``backend="torch"``).
"""

from __future__ import annotations

from typing import Optional

import torch


def ce_scores_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    feature_sqnorm: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    embedding_dtype: Optional[torch.dtype] = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Returns ``(loss, el2n, grad_norm, confidence, margin, entropy, correct, embedding)``.

    Scores are float32 (float64 when ``compute_dtype`` is; bool for ``correct``); ``embedding`` is ``[N, C]`` in
    ``embedding_dtype``, or an empty ``[0]`` float32 tensor when not asked for.
    """
    n, c = logits.shape
    z = logits.to(compute_dtype)
    labelled = targets != ignore_index
    y = torch.where(labelled, targets, 0)

    finite_or_neg_inf = ~(torch.isnan(z) | (z == float("inf")))
    bad = ~finite_or_neg_inf.all(dim=1) | (z == float("-inf")).all(dim=1)

    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    q = torch.full_like(z, label_smoothing / c)
    q[torch.arange(n), y] += 1.0 - label_smoothing
    # -Σ q log p with 0·log 0 = 0 (cross_entropy(label_smoothing=1) gives 0·inf = NaN for a masked
    # target; the loss is +inf there).
    loss = -torch.where(q > 0, q * logp, torch.zeros_like(logp)).sum(dim=1)
    e = p - q
    el2n = torch.linalg.vector_norm(e, dim=1)
    grad_norm = el2n if feature_sqnorm is None else el2n * torch.sqrt(feature_sqnorm.to(compute_dtype) + 1)
    top2 = torch.topk(p, k=min(2, c), dim=1).values
    confidence = top2[:, 0]
    margin = top2[:, 0] - (top2[:, 1] if c > 1 else 0)
    entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=1)
    correct = (z.argmax(dim=1) == y) & labelled & ~bad

    nan = torch.full_like(loss, float("nan"))
    # Unlabelled rows contribute no gradient: 0 even when their logits are bad.
    label_scores = [torch.where(labelled, torch.where(bad, nan, s), 0.0) for s in (loss, el2n, grad_norm)]
    free_scores = [torch.where(bad, nan, s) for s in (confidence, margin, entropy)]
    score_dtype = torch.promote_types(compute_dtype, torch.float32)  # float64 oracles stay float64
    scores = [s.to(score_dtype) for s in label_scores + free_scores]

    if embedding_dtype is None:
        embedding = logits.new_empty((0,), dtype=torch.float32)
    else:
        e = torch.where(bad[:, None], float("nan"), e)
        e = torch.where(labelled[:, None], e, torch.zeros_like(e))
        embedding = e.to(embedding_dtype)
    return (*scores, correct, embedding)
