"""The synthetic world: flat shapes on plain canvases, written in the real datasets' formats.

``python -m dataset.synthetic --out DIR [--seed S] [--train N] [--val M] [--preset full|demo]``.
"""

from .config import PRESETS, WorldConfig, preset
from .writers import write_world

__all__ = ["PRESETS", "WorldConfig", "preset", "write_world"]
