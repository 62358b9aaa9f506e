"""Data layer: one Sample model, one reader and one writer per format, validation, benchmark builders."""

from shiftkit.data.formats import (
    FORMATS,
    Dataset,
    DatasetWriter,
    detect_format,
    normalize_relpath,
    open_dataset,
    safe_join,
)
from shiftkit.data.sample import Boxes, Sample, Task

__all__ = [
    "Boxes", "Dataset", "DatasetWriter", "FORMATS", "Sample", "Task",
    "detect_format", "normalize_relpath", "open_dataset", "safe_join",
]
