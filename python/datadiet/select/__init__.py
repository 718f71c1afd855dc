"""Selection strategies built on ``datadiet.ops``."""

from datadiet.select.gradmatch import GradMatchSelection, gradmatch
from datadiet.select.selective_backprop import SelectiveBackpropSelector

__all__ = ["GradMatchSelection", "SelectiveBackpropSelector", "gradmatch"]
