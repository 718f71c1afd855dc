"""Plain-PyTorch references of every datadiet op: the ``backend="torch"`` path and the oracle of the tests."""

from datadiet.reference.ce_scores import ce_scores_reference

__all__ = ["ce_scores_reference"]
