"""Drop-ins for peers' hot spots, backed by ``datadiet.ops``: functions with the peers' exact
signatures and return types, and ``patch()`` functions that swap them into an imported peer so
its own strategies run on our kernels unchanged.

- ``datadiet.compat.cords``: CORDS' OMP solvers (GradMatch and its variants).
- ``datadiet.compat.deepcore``: DeepCore's GradMatch OMP and its GraNd / Uncertainty scoring.
"""

from datadiet.compat import cords, deepcore

__all__ = ["cords", "deepcore"]
