"""Opening a dataset for analysis: `shiftkit.data.open_dataset` when it is available.

Local shim: until the formats module exports `open_dataset`, a folder is read as an unlabeled
set of images (every image file under it, sorted), with the same Dataset surface the analysis
needs (root, task, ignore_index, paths(), len, [i]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shiftkit.data.images import is_image_name, read_image
from shiftkit.data.sample import Sample, Task
from shiftkit.errors import DatasetError


class FolderImages:
    """Every image file under `root` (recursively, sorted), unlabeled."""

    format = "folder"
    task = Task.UNLABELED
    ignore_index = None
    classes: list[str] = []

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError("not a folder", self.root, "pass a dataset folder")
        self._paths = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and is_image_name(p.name) and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not self._paths:
            raise DatasetError("no images found", self.root, "point --source/--target at a folder of images")

    def __len__(self) -> int:
        return len(self._paths)

    def paths(self) -> list[str]:
        return list(self._paths)

    def __getitem__(self, i: int) -> Sample:
        p = self._paths[i]
        image, meta = read_image(self.root / p)
        return Sample(image=image, target=None, path=p, meta=meta)


def open_for_analysis(path: str | os.PathLike, task: str | None = None) -> Any:
    """A shiftkit Dataset for `path` (format detected), or the folder shim above."""
    try:
        from shiftkit.data import open_dataset  # type: ignore[attr-defined]
    except ImportError:
        open_dataset = None
    if open_dataset is not None:
        return open_dataset(path, task=task)
    if not Path(path).exists():
        raise DatasetError("no such folder", path, "check the path")
    return FolderImages(path)
