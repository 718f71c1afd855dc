"""Accelerated ops. Each takes ``backend="auto" | "cpu" | "cuda" | "triton" | "torch"``."""

from datadiet.ops.ce_scores import CEScores, ce_scores

__all__ = ["CEScores", "ce_scores"]
