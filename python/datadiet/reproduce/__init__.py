"""Miniature reproductions of the seeds' claims: each runs the real pipeline, prints and saves
what it observes (mean ± std over seeds, CSV, JSON, a plot) and never asserts the paper's
numbers."""

from datadiet.reproduce.ensemble_fractions import CLAIM as ENSEMBLE_FRACTIONS

CLAIMS = {ENSEMBLE_FRACTIONS: "datadiet.reproduce.ensemble_fractions"}

__all__ = ["CLAIMS"]
