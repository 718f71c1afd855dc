"""DeepCore's (github.com/PatrickZH/DeepCore) selection hot spots on ``datadiet`` ops, as
replacements for the methods of its classes (DeepCore is not a pip package: put its checkout
on ``sys.path``; ``patch()`` imports ``deepcore.methods``).

Replaced (upstream path — ours):

- ``deepcore/methods/gradmatch.py``: ``GradMatch.orthogonal_matching_pursuit(self, A, b,
  budget, lam=1.)`` (torch) and ``GradMatch.orthogonal_matching_pursuit_np`` (numpy) —
  ``orthogonal_matching_pursuit``: ``A`` ``(d, n)`` atoms as columns, ``b`` ``(d,)``, returns a
  dense ``np.float32`` vector of ``n`` weights, on ``datadiet.ops.omp``.
- ``deepcore/methods/grand.py``: ``GraNd.finish_run(self)`` — ``grand_finish_run``: fills
  ``self.norm_matrix[:, self.cur_repeat]`` from one no-grad forward per batch and one fused
  ``ce_scores`` call (``grad_norm`` with the recorded embedding's squared norms), instead of an
  autograd pass per batch and a ``[B, C, D]`` weight-gradient tensor (2 GB per batch of 256 at
  ImageNet's C = 1000, D = 2048).
- ``deepcore/methods/uncertainty.py``: ``Uncertainty.rank_uncertainty(self, index=None)`` —
  ``rank_uncertainty``: the same three scores from one pass (``Margin`` and ``Entropy`` from
  ``ce_scores``, ``LeastConfidence`` the largest raw logit, as DeepCore scores it).

Where results differ from DeepCore's, and why:

- **OMP**: DeepCore picks by signed correlation, solves the ridge system unconstrained during
  the loop and applies non-negativity once at the end, as an NNLS on the *normal equations*
  ``(A_SᵀA_S + λI) x = A_Sᵀ b`` (not the ridge objective); ``omp`` keeps the weights
  non-negative throughout with an exact NNLS of the ridge objective on the support, so atoms
  are chosen against the residual the final weights leave. A budget of 1 gets its fitted weight
  (DeepCore sets 1). DeepCore's torch path calls ``torch.lstsq`` (removed from PyTorch) with a
  hard-coded ``device="cuda"``; ours runs on the tensors' device.
- **GraNd**: identical scores (DeepCore's per-sample gradient of the batch-mean loss, so each
  norm carries its batch's ``1/B``), up to float32 rounding; scores follow the version that
  feeds raw logits to the loss (an earlier DeepCore applied ``softmax`` first).
- **Entropy**: ``Σ p log p`` exactly, where DeepCore computes ``Σ p log(p + 1e-6)``: the scores
  differ by at most ``1e-6·C`` in absolute value, so only near-ties can change order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datadiet.compat._omp import dense_weights
from datadiet.compat._patching import Patch, import_peer
from datadiet.ops.ce_scores import ce_scores


def orthogonal_matching_pursuit(self: Any, A: Any, b: Any, budget: int, lam: float = 1.0) -> np.ndarray:
    """DeepCore's GradMatch OMP: at most ``budget`` atoms (columns of ``A``) with non-negative
    weights matching ``b`` under ridge ``lam``. Accepts torch tensors or numpy arrays (so it
    replaces both ``orthogonal_matching_pursuit`` and ``orthogonal_matching_pursuit_np``);
    returns the dense ``np.float32`` weights."""
    A_t = torch.as_tensor(A).detach()
    b_t = torch.as_tensor(b).detach().to(A_t.device)
    if A_t.dim() != 2 or b_t.dim() != 1 or b_t.shape[0] != A_t.shape[0]:
        raise ValueError(f"datadiet.compat.deepcore.orthogonal_matching_pursuit: A must be (d, n) and b (d,), got "
                         f"{tuple(A_t.shape)} and {tuple(b_t.shape)}")
    if not float(lam) >= 0:
        raise ValueError(f"datadiet.compat.deepcore.orthogonal_matching_pursuit: lam must be >= 0, got {lam}")
    k = min(max(int(budget), 0), A_t.shape[1])
    return dense_weights(A_t.T.float(), b_t.float(), k, lam=lam, positive=True).cpu().numpy()


def grand_finish_run(self: Any) -> None:
    """``GraNd.finish_run``: the current repeat's column of ``self.norm_matrix``, ‖∂ℓ̄/∂(W, bias)‖
    of the last layer per sample, where ℓ̄ is the batch-mean cross-entropy (DeepCore's)."""
    from torch.utils.data import DataLoader

    model = self.model
    model.embedding_recorder.record_embedding = True
    model.eval()
    loader = DataLoader(self.dst_train, batch_size=self.args.selection_batch, num_workers=self.args.workers)
    start = 0
    with torch.no_grad():
        for inputs, targets in loader:
            outputs = model(inputs.to(self.args.device)).float()
            emb = model.embedding_recorder.embedding.flatten(1)
            scores = ce_scores(outputs, targets.to(outputs.device).long(), feature_sqnorm=emb.float().pow(2).sum(1))
            batch = targets.shape[0]
            self.norm_matrix[start:start + batch, self.cur_repeat] = (scores.grad_norm / batch).to(self.norm_matrix)
            start += batch
    model.train()
    model.embedding_recorder.record_embedding = False


def rank_uncertainty(self: Any, index: Any = None) -> np.ndarray:
    """``Uncertainty.rank_uncertainty``: one score per sample of ``dst_train`` (or of its
    ``index`` subset), by ``self.selection_method`` — ``LeastConfidence``: the largest logit;
    ``Entropy``: ``Σ p log p``; ``Margin``: ``p(1) − p(2)``."""
    from torch.utils.data import DataLoader, Subset

    if self.selection_method not in ("LeastConfidence", "Entropy", "Margin"):
        raise NotImplementedError(f"datadiet.compat.deepcore.rank_uncertainty: selection_method "
                                  f"{self.selection_method!r} is not LeastConfidence, Entropy or Margin")
    self.model.eval()
    data = self.dst_train if index is None else Subset(self.dst_train, index)
    loader = DataLoader(data, batch_size=self.args.selection_batch, num_workers=self.args.workers)
    parts = []
    with torch.no_grad():
        for inputs, _ in loader:
            logits = self.model(inputs.to(self.args.device)).float()
            if self.selection_method == "LeastConfidence":
                parts.append(logits.max(dim=1).values)
                continue
            # Margin and entropy ignore the label; any valid class index stands in for it.
            scores = ce_scores(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
            parts.append(-scores.entropy if self.selection_method == "Entropy" else scores.margin)
    return torch.cat(parts).cpu().numpy() if parts else np.zeros(0, dtype=np.float32)


def patch() -> Patch:
    """Imports ``deepcore.methods`` and replaces ``GradMatch.orthogonal_matching_pursuit`` (and
    ``_np``), ``GraNd.finish_run`` and ``Uncertainty.rank_uncertainty`` on DeepCore's classes
    with ours. Returns a ``Patch``: ``undo()`` restores DeepCore's methods."""
    import sys

    import_peer("deepcore", ("deepcore.methods",), "put a DeepCore checkout (github.com/PatrickZH/DeepCore) on "
                                                   "sys.path")
    methods = sys.modules["deepcore.methods"]
    wanted = [("GradMatch", "orthogonal_matching_pursuit", orthogonal_matching_pursuit),
              ("GradMatch", "orthogonal_matching_pursuit_np", orthogonal_matching_pursuit),
              ("GraNd", "finish_run", grand_finish_run),
              ("Uncertainty", "rank_uncertainty", rank_uncertainty)]
    swaps = []
    for cls_name, attr, ours in wanted:
        cls = getattr(methods, cls_name, None)
        if cls is not None and attr in vars(cls) and vars(cls)[attr] is not ours:
            swaps.append((cls, attr, vars(cls)[attr]))
            setattr(cls, attr, ours)
    if not swaps:
        raise RuntimeError("datadiet.compat.deepcore.patch: none of GradMatch, GraNd, Uncertainty with the methods "
                           "above was found in deepcore.methods (already patched, or another DeepCore version)")
    return Patch(swaps)
