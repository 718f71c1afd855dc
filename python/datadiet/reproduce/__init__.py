"""Miniature reproductions of the seeds' claims: each runs the real pipeline, prints and saves
what it observes (mean ± std over seeds, CSV, JSON, a plot) and never asserts the paper's
numbers."""

from datadiet.reproduce.ensemble_fractions import CLAIM as ENSEMBLE_FRACTIONS
from datadiet.reproduce.lipt_grand import CLAIM as LIPT_GRAND

CLAIMS = {ENSEMBLE_FRACTIONS: "datadiet.reproduce.ensemble_fractions", LIPT_GRAND: "datadiet.reproduce.lipt_grand"}

__all__ = ["CLAIMS"]
