"""Selection strategies built on ``datadiet.ops``."""

from datadiet.select.adaselection import AdaSelector
from datadiet.select.glister import GlisterSelection, glister
from datadiet.select.gradmatch import GradMatchSelection, gradmatch, last_layer_embedding
from datadiet.select.selection import Selection
from datadiet.select.selective_backprop import SelectiveBackpropSelector

__all__ = ["AdaSelector", "GlisterSelection", "GradMatchSelection", "Selection", "SelectiveBackpropSelector", "glister", "gradmatch",
           "last_layer_embedding"]
