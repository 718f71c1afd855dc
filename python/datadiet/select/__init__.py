"""Selection strategies built on ``datadiet.ops``."""

from datadiet.select.selective_backprop import SelectiveBackpropSelector

__all__ = ["SelectiveBackpropSelector"]
