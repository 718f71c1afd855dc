"""Plain-PyTorch references of every datadiet op: the ``backend="torch"`` path and the oracle of the tests."""

from datadiet.reference.ce_scores import ce_scores_reference
from datadiet.reference.grad_norm import per_sample_conv_grad_sqnorm_reference, per_sample_grad_sqnorm_reference
from datadiet.reference.merge import average_reference, lerp_reference, magnitude_prune_reference
from datadiet.reference.omp import omp_reference
from datadiet.reference.select import (
    selective_backprop_keep_reference,
    topk_select_reference,
    weighted_sample_reference,
)

__all__ = ["average_reference", "ce_scores_reference", "lerp_reference", "magnitude_prune_reference", "omp_reference", "per_sample_conv_grad_sqnorm_reference",
           "per_sample_grad_sqnorm_reference",
           "selective_backprop_keep_reference", "topk_select_reference",
           "weighted_sample_reference"]
