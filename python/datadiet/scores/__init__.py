"""Per-sample scores of a model over a dataset: the scoring pass (``score_dataset``, every
``ce_scores`` score with the classification layer's features, in dataset order, distributed
aware) forgetting counters fed from the training forward pass, and exact full-model per-sample gradient
norms (``grad_norms``)."""

from datadiet.scores.forgetting import ForgettingCounter
from datadiet.scores.grad_norms import grad_norms
from datadiet.scores.scoring import ScoreTable, eval_mode, final_linear, score_dataset

__all__ = ["ForgettingCounter", "grad_norms", "ScoreTable", "eval_mode", "final_linear", "score_dataset"]
