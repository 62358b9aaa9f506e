"""Dataset formats: one reader and one writer per format (see docs/ARCHITECTURE.md, "Data API").

Formats: imagefolder, csv, folder (unlabeled), segmentation (images/ + masks/), coco, yolo.
"""

from shiftkit.data.formats.dataset import FORMAT_TASK, FORMATS, Dataset, Entry
from shiftkit.data.formats.paths import is_inside, list_images, normalize_relpath, safe_join, walk_files
from shiftkit.data.formats.readers import detect_format, open_dataset
from shiftkit.data.formats.writer import DatasetWriter

__all__ = [
    "FORMATS", "FORMAT_TASK", "Dataset", "DatasetWriter", "Entry", "detect_format", "open_dataset",
    "is_inside", "list_images", "normalize_relpath", "safe_join", "walk_files",
]
