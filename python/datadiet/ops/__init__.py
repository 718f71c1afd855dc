"""Accelerated ops. Each takes ``backend="auto" | "cpu" | "cuda" | "triton" | "torch"``."""

from datadiet.ops.ce_scores import CEScores, ce_scores
from datadiet.ops.merge import average_, lerp_, magnitude_prune_
from datadiet.ops.omp import PIVOT_EPS, STOP_REASONS, OMPResult, omp, omp_factored
from datadiet.ops.per_sample_grad_sqnorm import per_sample_conv_grad_sqnorm, per_sample_grad_sqnorm
from datadiet.ops.selective_backprop import selective_backprop_keep_
from datadiet.ops.stratified_select import stratified_select
from datadiet.ops.topk_select import topk_select
from datadiet.ops.weighted_sample import weighted_sample

__all__ = ["CEScores", "OMPResult", "PIVOT_EPS", "STOP_REASONS", "average_", "ce_scores", "lerp_", "magnitude_prune_",
           "omp", "omp_factored", "per_sample_conv_grad_sqnorm", "per_sample_grad_sqnorm", "selective_backprop_keep_", "stratified_select", "topk_select", "weighted_sample"]
