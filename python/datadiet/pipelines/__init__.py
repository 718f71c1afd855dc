"""Seed systems composed from the training loop: ``ensemble`` (seed 000's ensembles on
difficulty subsets) and ``lipt`` (seed 001's distributed jigsaw pre-training for selection)."""

from datadiet.pipelines.difficulty_ensembles import EnsemblePlan, ensemble, plan
from datadiet.pipelines.lightweight_pretraining import LiptOptions, NoWorkerLeft, lipt

__all__ = ["EnsemblePlan", "LiptOptions", "NoWorkerLeft", "ensemble", "lipt", "plan"]
