"""Per-sample scores of a model over a dataset: the scoring pass (``score_dataset``, every
``ce_scores`` score with the classification layer's features, in dataset order, distributed
aware) and forgetting counters fed from the training forward pass."""

from datadiet.scores.forgetting import ForgettingCounter
from datadiet.scores.scoring import ScoreTable, eval_mode, final_linear, score_dataset

__all__ = ["ForgettingCounter", "ScoreTable", "eval_mode", "final_linear", "score_dataset"]
