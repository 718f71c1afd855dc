"""Published selection systems composed from the training loop: ``ensemble`` (ensembles on
difficulty subsets) and ``lipt`` (LiPT's distributed jigsaw pre-training for selection)."""

from datadiet.pipelines.difficulty_ensembles import EnsemblePlan, ensemble, plan
from datadiet.pipelines.lightweight_pretraining import LiptOptions, NoWorkerLeft, lipt

__all__ = ["EnsemblePlan", "LiptOptions", "NoWorkerLeft", "ensemble", "lipt", "plan"]
