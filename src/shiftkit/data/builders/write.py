"""The one step of the builders that touches the data layer: stream a split through `DatasetWriter`.

The writer owns atomicity and resume (OUT.partial + a hashed journal, renamed to OUT at the end);
here we only skip finished items *before* decoding them, so a resumed build costs nothing for
the part already written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm


def write_split(target: Path, split, provenance: dict, progress: bool = True) -> None:
    """Write `split.items` as a `split.format` dataset at `target` (resumes an interrupted run)."""
    from shiftkit.data import DatasetWriter

    classes = list(split.classes) if split.format != "folder" else None
    with DatasetWriter(target, format=split.format, classes=classes, provenance=provenance) as w:
        bar = tqdm(split.items, desc=split.name, unit="img", disable=not progress, file=sys.stderr, leave=False)
        for item in bar:
            if w.is_done(item.path):
                continue
            sample = item.make()
            if not split.labelled:
                sample.target = None
            w.write(sample)
