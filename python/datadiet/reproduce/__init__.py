"""Miniature reproductions of the seeds' claims: each runs the real pipeline, prints and saves
what it observes (mean ± std over seeds, CSV, JSON, a plot) and never asserts the paper's
numbers. ``CLAIMS``: claim name → the module whose ``run`` reproduces it (imported on use)."""

CLAIMS = {
    "ensemble-fractions": "datadiet.reproduce.ensemble_fractions",  # the difficulty-ensembles study
    "lipt-grand": "datadiet.reproduce.lipt_grand",  # the LiPT study
    "adaselection-ranks": "datadiet.reproduce.adaselection_ranks",  # the AdaSelection study
    "cached-gradmatch": "datadiet.reproduce.cached_gradmatch",  # the Cached-GradMatch study
    "sb-detection": "datadiet.reproduce.sb_detection",  # the Cached-GradMatch study
    "infobatch": "datadiet.reproduce.infobatch_savings",
}

__all__ = ["CLAIMS"]
