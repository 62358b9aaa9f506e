"""The one in-memory model every command works on.

A `Sample` is an image plus its target. Targets by task:
- classification: an int class id (index into the dataset's `classes`);
- unlabeled: None;
- segmentation: an HxW uint8 mask of class ids (255 = ignore);
- detection: `Boxes` (absolute pixel xyxy + class ids).

Images are always uint8 HxWxC with C = 1 (grayscale) or 3 (RGB), upright (EXIF applied).
What the file had beyond that (alpha channel, 16-bit depth, palette, EXIF orientation) is kept
in `meta` so that writers can reproduce the original format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Task(str, enum.Enum):
    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    DETECTION = "detection"
    UNLABELED = "unlabeled"

    @classmethod
    def _missing_(cls, value: object) -> None:
        raise ValueError(f"unknown task {value!r}: use one of {', '.join(t.value for t in cls)}")


@dataclass
class Boxes:
    """Detection targets: `xyxy` float32 (N, 4) in absolute pixels, `labels` int64 (N,)."""

    xyxy: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.xyxy) != len(self.labels):
            raise ValueError(f"{len(self.xyxy)} boxes but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Boxes)
            and np.array_equal(self.xyxy, other.xyxy)
            and np.array_equal(self.labels, other.labels)
        )


Target = int | np.ndarray | Boxes | None


@dataclass
class Sample:
    image: np.ndarray
    target: Target = None
    path: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim == 2:
            img = img[:, :, None]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
            raise ValueError(
                f"{self.path or 'sample'}: image must be uint8 HxWx1 or HxWx3, got {img.dtype} {img.shape}"
            )
        self.image = img

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def with_image(self, image: np.ndarray) -> Sample:
        """A copy with a new image and the same target, path and meta (photometric transforms)."""
        return Sample(image=image, target=self.target, path=self.path, meta=dict(self.meta))
