"""Data loading for training: torch datasets over shiftkit datasets, resumable batch order, bad images.

- `open_any(path_or_dataset)` opens a folder through the data layer (the only image reader).
- `ImageTensors` decodes one sample, resizes it to the training size and returns a float CHW
  tensor in [0, 1] (the pipeline of cached features); a corrupt image becomes a placeholder flagged `ok=False` (skip mode) that `collate`
  drops and reports, or raises (fail mode).
- `batch_order(n, batch_size, seed, epoch, ...)` is a pure function of (seed, stream, epoch): a
  resumed run regenerates the same order and skips the batches already done, so resume is exact
  without pickling any iterator.
- `scan(ds)` decodes every image once up front to refuse a broken set before training (--on-bad fail).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from shiftkit.errors import DatasetError, ShiftkitError

STREAM_SALT = {"source": 0, "target": 1, "eval": 2}


def open_any(data: Any, task: str | None = None, what: str = "--data"):
    """A shiftkit Dataset from a path (opened by the data layer) or an already opened dataset."""
    if data is None:
        return None
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, os.PathLike)):
        return data
    try:
        from shiftkit.data import open_dataset  # type: ignore[attr-defined]
    except ImportError:
        from shiftkit.data.formats.readers import open_dataset
    path = os.fspath(data)
    if not os.path.exists(path):
        raise DatasetError(f"{what}: folder not found", path, "check the path")
    return open_dataset(path, task=task)


def dataset_labels(ds) -> list[int] | None:
    """Class ids without decoding, or None for unlabeled data."""
    task = getattr(ds, "task", None)
    value = getattr(task, "value", task)
    if value not in (None, "classification"):
        return None
    try:
        return [int(v) for v in ds.labels()]
    except Exception:
        return None


def dataset_paths(ds) -> list[str]:
    try:
        return list(ds.paths())
    except Exception:
        return [str(i) for i in range(len(ds))]


def preprocess(images, size, channels):
    """The same pipeline as cached features (models.features.preprocess): float [0, 1], antialiased resize.

    Images already at the training size take a numpy fast path (about 10x cheaper per item).
    """
    h, w = (int(size[0]), int(size[1]))
    if len(images) == 1 and images[0].shape[0] == h and images[0].shape[1] == w:
        a = np.asarray(images[0])
        a = a[:, :, None] if a.ndim == 2 else a
        c = a.shape[2]
        x = a.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
        if c == 1 and channels == 3:
            x = np.repeat(x, 3, axis=0)
        elif c == 3 and channels == 1:
            x = x.mean(axis=0, keepdims=True, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x))[None]
    from shiftkit.models.features import preprocess as _pre

    return _pre(images, (h, w), channels)


class ImageTensors(torch.utils.data.Dataset):
    """Index i -> {"x": float (C, H, W) in [0, 1], "y", "index": i, "ok": bool, "path": str}.

    y: the class id from `labels` (-1 when unlabeled) or, with masks=True (segmentation), the
    mask resized with nearest neighbour to the training size as int64 (H, W) (255 = ignore;
    all 255 when the sample has no mask). masks=False never reads a sample's target at all.
    """

    def __init__(self, ds, size: tuple[int, int], channels: int, on_bad: str = "skip", labels: list[int] | None = None,
                 masks: bool = False, ignore_index: int = 255):
        if on_bad not in ("skip", "fail"):
            raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
        self.ds, self.size, self.channels, self.on_bad = ds, tuple(size), int(channels), on_bad
        self.masks, self.ignore_index = bool(masks), int(ignore_index)
        self.labels = None if masks else (labels if labels is not None else dataset_labels(ds))
        self.paths = dataset_paths(ds)

    def __len__(self) -> int:
        return len(self.ds)

    def _empty_y(self):
        if self.masks:
            return torch.full(self.size, self.ignore_index, dtype=torch.long)
        return -1

    def __getitem__(self, i: int) -> dict:
        y = self.labels[i] if self.labels is not None else self._empty_y()
        try:
            s = self.ds[i]
            x = preprocess([s.image], self.size, self.channels)[0].contiguous()
            if self.masks and isinstance(s.target, np.ndarray):
                m = torch.from_numpy(np.ascontiguousarray(s.target)).long()[None, None].float()
                y = torch.nn.functional.interpolate(m, size=self.size, mode="nearest")[0, 0].long()
            return {"x": x, "y": y, "index": int(i), "ok": True, "path": self.paths[i], "error": ""}
        except ShiftkitError as exc:
            if self.on_bad == "fail":
                raise
            x = torch.zeros((self.channels, *self.size), dtype=torch.float32)
            return {"x": x, "y": self._empty_y(), "index": int(i), "ok": False, "path": self.paths[i], "error": str(exc)}


class TensorRows(torch.utils.data.Dataset):
    """Cached features: index i -> {"x": features[i], "y": labels[i], "index": i, "ok": True}."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor | None, paths: list[str] | None = None):
        self.features = features
        self.labels = labels if labels is not None else torch.full((len(features),), -1, dtype=torch.long)
        self.paths = paths or [str(i) for i in range(len(features))]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.features[i], "y": int(self.labels[i]), "index": int(i), "ok": True, "path": self.paths[i], "error": ""}


def collate(items: list[dict]) -> dict:
    """Stack good items; bad ones are listed under "bad" as (path, error) and dropped."""
    good = [it for it in items if it["ok"]]
    bad = [(it["path"], it["error"]) for it in items if not it["ok"]]
    if not good:
        return {"x": None, "y": None, "index": None, "path": [], "bad": bad}
    return {
        "x": torch.stack([it["x"] for it in good]),
        "y": (torch.stack([it["y"] for it in good]) if torch.is_tensor(good[0]["y"])
              else torch.tensor([it["y"] for it in good], dtype=torch.long)),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "path": [it["path"] for it in good],
        "bad": bad,
    }


def batch_order(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    stream: str = "source",
    shuffle: bool = True,
    drop_last: bool = True,
    weights: Sequence[float] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """The epoch's batches of indices: a pure function of its arguments (exact resume).

    weights: per-sample sampling weights -> n draws with replacement (balanced sampling).
    world_size > 1: each rank takes every world_size-th batch (DDP shards, same order everywhere).
    """
    if n <= 0:
        raise DatasetError(f"the {stream} set is empty")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + STREAM_SALT.get(stream, 7) * 10_007 + int(epoch))
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.double)
        order = torch.multinomial(w, n, replacement=True, generator=g).tolist()
    elif shuffle:
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    bs = int(batch_size)
    batches = [order[i : i + bs] for i in range(0, n, bs)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < bs:
        batches = batches[:-1]
    if world_size > 1:
        m = len(batches) // world_size * world_size or world_size
        batches = (batches * world_size)[:m][rank::world_size]
    return batches


def balanced_class_weights(labels: Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class loss weights w_c = N / (C * n_c) (`--class-weights balanced`); an absent class counts as 1."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float()
    return counts.sum() / (num_classes * counts.clamp_min(1))


def balanced_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """w_i = 1 / count(y_i): every class is drawn equally often in expectation."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return [1.0 / counts[y] for y in labels]


def make_loader(dataset, batches: list[list[int]], workers: int, seed: int, pin: bool = False):
    """A DataLoader over the given batches; its own generator so global RNG state is untouched."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=int(workers),
        collate_fn=collate,
        generator=g,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def scan(ds, workers: int = 0, progress: bool = True) -> list[tuple[str, str]]:
    """Decode every image once; return [(path, error)] of the ones that fail."""
    from tqdm import tqdm

    tds = ImageTensors(ds, (8, 8), 3, on_bad="skip")
    loader = make_loader(tds, [[i] for i in range(len(tds))], workers, 0)
    bad: list[tuple[str, str]] = []
    for b in tqdm(loader, total=len(tds), desc="checking images", disable=not progress, file=sys.stderr, leave=False):
        bad.extend(b["bad"])
    return bad


def iterate_batches(dataset, batch_size: int, workers: int = 0) -> Iterable[dict]:
    """Sequential batches over a whole dataset (evaluation, prediction, feature extraction)."""
    n = len(dataset)
    batches = [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
    return make_loader(dataset, batches, workers, 0)
