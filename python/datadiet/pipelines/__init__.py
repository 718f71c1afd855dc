"""Seed systems composed from the training loop: ``ensemble`` (seed 000's ensembles on
difficulty subsets)."""

from datadiet.pipelines.difficulty_ensembles import EnsemblePlan, ensemble, plan

__all__ = ["EnsemblePlan", "ensemble", "plan"]
