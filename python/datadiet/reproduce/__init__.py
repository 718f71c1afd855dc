"""Miniature reproductions of the seeds' claims: each runs the real pipeline, prints and saves
what it observes (mean ± std over seeds, CSV, JSON, a plot) and never asserts the paper's
numbers. ``CLAIMS``: claim name → the module whose ``run`` reproduces it (imported on use)."""

CLAIMS = {
    "ensemble-fractions": "datadiet.reproduce.ensemble_fractions",  # seed 000
    "lipt-grand": "datadiet.reproduce.lipt_grand",  # seed 001
    "adaselection-ranks": "datadiet.reproduce.adaselection_ranks",  # seed 002
    "cached-gradmatch": "datadiet.reproduce.cached_gradmatch",  # seed 003
    "sb-detection": "datadiet.reproduce.sb_detection",  # seed 003
    "infobatch": "datadiet.reproduce.infobatch_savings",
}

__all__ = ["CLAIMS"]
