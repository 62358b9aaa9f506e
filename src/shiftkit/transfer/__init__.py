"""Training-free data domain transfer: make a labeled source set look like a target set.

- `functional`: pure batched tensor maths (fda, histogram_match, color_stats, pca_transfer, ...);
- `methods`: thin classes with set statistics (FDA, HistogramMatching, ColorStats, PCATransfer);
- `selection`: which target styles which source (seeded random or stylistically nearest);
- `pipeline`: streaming A -> A' through the data layer (`run_transfer(TransferConfig(...))`).

Submodules are imported on use so that `import shiftkit.transfer` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = ["functional", "methods", "selection", "pipeline", "make_method", "run_transfer", "TransferConfig"]


def __getattr__(name: str):
    if name in ("functional", "methods", "selection", "pipeline"):
        return importlib.import_module(f"shiftkit.transfer.{name}")
    if name == "make_method":
        return importlib.import_module("shiftkit.transfer.methods").make_method
    if name in ("run_transfer", "TransferConfig"):
        return getattr(importlib.import_module("shiftkit.transfer.pipeline"), name)
    raise AttributeError(f"module 'shiftkit.transfer' has no attribute {name!r}")
