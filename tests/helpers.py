"""Comparison helpers shared by the op tests."""

from __future__ import annotations

import torch

from datadiet.reference import ce_scores_reference

SCORE_NAMES = ("loss", "el2n", "grad_norm", "confidence", "margin", "entropy")


def reference(logits, targets, feature_sqnorm=None, ignore_index=-100, label_smoothing=0.0,
              embedding_dtype=None):
    """The float64 oracle, computed from exactly the values the kernel sees."""
    return ce_scores_reference(logits, targets, feature_sqnorm, ignore_index, label_smoothing,
                               embedding_dtype and torch.float64, compute_dtype=torch.float64)


def assert_scores_match(out, ref, *, rtol=2e-5, atol=2e-5, emb_dtype=None, context=""):
    """out: a CEScores; ref: the tuple from ``reference``. NaNs must sit in the same places."""
    for i, name in enumerate(SCORE_NAMES):
        got, want = getattr(out, name), ref[i]
        assert got.dtype == torch.float32, (name, got.dtype)
        torch.testing.assert_close(got.cpu().double(), want.cpu().double(), rtol=rtol, atol=atol,
                                   equal_nan=True, msg=lambda m: f"{name} {context}: {m}")
    assert out.correct.dtype == torch.bool
    assert torch.equal(out.correct.cpu(), ref[6].cpu()), f"correct {context}"
    if emb_dtype is not None:
        assert out.embedding.dtype == emb_dtype
        tol = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[emb_dtype]
        torch.testing.assert_close(out.embedding.cpu().double(), ref[7].cpu().double(), rtol=tol, atol=tol,
                                   equal_nan=True, msg=lambda m: f"embedding {context}: {m}")


def random_case(n, c, dtype, *, seed=0, scale=3.0, device="cpu", ignore_frac=0.0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * scale).to(dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    if ignore_frac:
        targets[torch.rand(n, generator=g) < ignore_frac] = ignore_index
    features = torch.randn(n, 5, generator=g)
    return logits.to(device), targets.to(device), features.to(device)
