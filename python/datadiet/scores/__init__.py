"""Per-sample scores of a model over a dataset: the scoring pass (``score_dataset``, every
``ce_scores`` score with the classification layer's features, in dataset order, distributed
aware), forgetting counters fed from the training forward pass, exact full-model per-sample gradient
norms (``grad_norms``) and GraNd / EL2N averaged over initialisations (``grand``, ``el2n``)."""

from datadiet.scores.forgetting import ForgettingCounter
from datadiet.scores.grad_norms import grad_norms
from datadiet.scores.indexed import IndexedDataset
from datadiet.scores.repeated import RepeatedScores, el2n, grand
from datadiet.scores.scoring import GRAD_SCOPES, ScoreTable, eval_mode, final_linear, score_dataset, score_shards

__all__ = ["ForgettingCounter", "GRAD_SCOPES", "IndexedDataset", "RepeatedScores", "ScoreTable", "el2n",
           "eval_mode", "final_linear", "grad_norms", "grand", "score_dataset", "score_shards"]
