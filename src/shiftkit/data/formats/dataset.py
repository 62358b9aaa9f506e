"""`Dataset`: an index of entries (paths + small targets) that decodes one sample on demand.

Memory stays flat whatever the dataset size: only relative paths, class ids, box arrays and mask
paths are held; pixels are decoded in `__getitem__` / `iter_samples` through `shiftkit.data.images`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit.data.images import MAX_PIXELS, read_image, read_mask_palette
from shiftkit.data.sample import Boxes, Sample, Task
from shiftkit.errors import DatasetError, ShiftkitError

FORMATS = ("imagefolder", "csv", "folder", "segmentation", "coco", "yolo")
FORMAT_TASK = {
    "imagefolder": Task.CLASSIFICATION,
    "csv": Task.CLASSIFICATION,
    "folder": Task.UNLABELED,
    "segmentation": Task.SEGMENTATION,
    "coco": Task.DETECTION,
    "yolo": Task.DETECTION,
}


@dataclass(frozen=True)
class Entry:
    """One indexed image.

    path: image path relative to the root (POSIX). target: class id (classification), None
    (unlabeled), Boxes (coco: absolute xyxy), an (N, 5) float array `cls cx cy w h` normalised
    (yolo: converted once the image size is known). mask: mask path (segmentation).
    extra: format-specific details a writer can carry over (COCO image record, ...).
    """

    path: str
    target: Any = None
    mask: str | None = None
    extra: dict = field(default_factory=dict)


def boxes_of(e: Entry, width: int, height: int) -> Boxes:
    """An entry's detection target in absolute xyxy pixels (YOLO's normalised cx,cy,w,h scaled here)."""
    if isinstance(e.target, Boxes):
        return Boxes(e.target.xyxy.copy(), e.target.labels.copy())
    arr = np.asarray(e.target, dtype=np.float64).reshape(-1, 5)
    cx, cy, bw, bh = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return Boxes(xyxy.astype(np.float32), arr[:, 0].astype(np.int64))


class Dataset:
    """A dataset on disk in one of `FORMATS`; see docs/ARCHITECTURE.md ("Data API")."""

    def __init__(
        self,
        root: Path,
        format: str,
        task: Task,
        entries: list[Entry],
        classes: list[str] | None = None,
        class_ids: list[int] | None = None,
        ignore_index: int | None = None,
        info: dict | None = None,
        max_pixels: int = MAX_PIXELS,
    ):
        self.root = Path(root)
        self.format = format
        self.task = Task(task)
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.classes: list[str] = list(classes or [])
        self.class_ids: list[int] = list(class_ids) if class_ids is not None else list(range(len(self.classes)))
        self.ignore_index = ignore_index
        self.info: dict = dict(info or {})  # format details for writers (csv name, COCO categories, ...)
        self.max_pixels = int(max_pixels)

    # -- index, no decoding ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"Dataset(root={str(self.root)!r}, format={self.format!r}, task={self.task.value!r}, "
            f"n={len(self)}, classes={len(self.classes)})"
        )

    def paths(self) -> list[str]:
        """Relative image paths, in dataset order."""
        return [e.path for e in self.entries]

    def labels(self) -> list[int]:
        """Class ids of a classification dataset, without decoding any image."""
        if self.task is not Task.CLASSIFICATION:
            raise ShiftkitError(
                f"labels() needs a classification dataset, this one is {self.task.value}",
                self.root,
                "use ds[i].target (masks/boxes) or open the folder with task='classification'",
            )
        return [int(e.target) for e in self.entries]

    def class_counts(self) -> dict[str, int]:
        """Images per class (classification) or boxes per class (coco/yolo); no decoding.

        Segmentation counts need the masks: see `shiftkit.data.validate`.
        """
        counts = {c: 0 for c in self.classes}
        if self.task is Task.CLASSIFICATION:
            for e in self.entries:
                counts[self.classes[e.target]] += 1
        elif self.task is Task.DETECTION:
            for e in self.entries:
                labels = e.target.labels if isinstance(e.target, Boxes) else np.asarray(e.target)[:, 0].astype(np.int64)
                for lab in labels.tolist():
                    counts[self.classes[lab]] += 1
        return counts

    def subset(self, indices) -> Dataset:
        """A dataset holding only `indices` (same root, format and classes): for splits."""
        ents = [self.entries[int(i)] for i in indices]
        return Dataset(
            self.root, self.format, self.task, ents, self.classes, self.class_ids, self.ignore_index, self.info, self.max_pixels
        )

    def with_max_pixels(self, max_pixels: int) -> Dataset:
        return Dataset(
            self.root, self.format, self.task, list(self.entries), self.classes, self.class_ids, self.ignore_index, self.info, max_pixels
        )

    # -- decoding -------------------------------------------------------------------------
    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, slice):
            raise TypeError("use ds.subset(range(...)) for a slice of a Dataset")
        n = len(self.entries)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return self._load(self.entries[int(i)])

    def _load(self, e: Entry) -> Sample:
        image, meta = read_image(self.root / e.path, self.max_pixels)
        h, w = image.shape[:2]
        target: Any = None
        if self.task is Task.CLASSIFICATION:
            target = int(e.target)
        elif self.task is Task.SEGMENTATION:
            mask, palette = read_mask_palette(self.root / e.mask, self.max_pixels)
            if mask.shape != (h, w):
                raise DatasetError(
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {e.path} is {w}x{h}",
                    self.root / e.mask,
                    "re-export the mask at the image's size",
                )
            target = mask
            meta["mask_path"] = e.mask
            if palette is not None:
                meta["palette"] = palette
        elif self.task is Task.DETECTION:
            target = boxes_of(e, w, h)
        for k, v in e.extra.items():
            meta[k] = v
        return Sample(image=image, target=target, path=e.path, meta=meta)

    def iter_samples(self, on_error: str = "raise", errors: list | None = None) -> Iterator[Sample]:
        """Stream samples in order. on_error="skip" appends each ShiftkitError to `errors` and goes on."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        for e in self.entries:
            try:
                s = self._load(e)
            except ShiftkitError as exc:
                if on_error == "raise":
                    raise
                if errors is not None:
                    errors.append(exc)
                continue
            yield s

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples()
