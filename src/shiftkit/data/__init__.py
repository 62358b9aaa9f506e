"""Data layer: one Sample model, one reader and one writer per format, validation, benchmark builders."""

from shiftkit.data.sample import Boxes, Sample, Task

__all__ = ["Boxes", "Sample", "Task"]
