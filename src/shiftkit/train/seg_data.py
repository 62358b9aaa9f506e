"""Segmentation datasets for training: image + mask tensors at the training size, ids mapped to classes.

`SegTensors(ds, size, channels)` yields the same dicts as `loaders.ImageTensors` ("x" float (C, H, W) in
[0, 1], "index", "ok", "path", "error") with "y" an (H, W) int64 mask: mask ids are mapped to class
positions (ds.class_ids may be sparse), 255 stays the ignore index, and a mask id that is not a class
raises (checked up front by `check_masks`, which names the file). Images are resized bilinearly
(antialiased), masks by nearest neighbour. `cache=True` keeps decoded uint8 tensors in memory
(small benchmark sets decode once, not once per epoch).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftkit.errors import DatasetError, ShiftkitError

IGNORE_INDEX = 255


def id_lut(class_ids: Sequence[int], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 -> int64 lookup: class id -> its position, ignore -> 255, anything else -> -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int64)
    for pos, cid in enumerate(class_ids):
        if 0 <= int(cid) < 256:
            lut[int(cid)] = pos
    lut[ignore_index] = IGNORE_INDEX
    return lut


def check_masks(ds, progress: bool = True, what: str = "data") -> None:
    """Refuse a segmentation set before training: masks with ids outside its classes, or a size that is
    not its image's. Uses shiftkit.data.validate's checks; raises DatasetError naming the first bad file."""
    from shiftkit.data.validate import validate

    root = getattr(ds, "root", None)
    if root is None:
        return
    report = validate(root, task="segmentation", near_dup_bits=None, progress=progress)
    bad = [p for p in report.problems if p.code in ("mask-ids", "mask-size", "mask-unreadable", "mask-missing")]
    if bad:
        p = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DatasetError(f"{what}: {p.message}{more}", p.path, p.fix)


class SegTensors(torch.utils.data.Dataset):
    """Index i -> {"x": (C, S, S) float, "y": (S, S) int64 mask (255 ignore), "index", "ok", "path", "error"}."""

    def __init__(self, ds, size: int | tuple[int, int], channels: int = 3, on_bad: str = "skip", labelled: bool = True,
                 classes: Sequence[str] | None = None, cache: bool = False):
        if on_bad not in ("skip", "fail"):
            raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
        self.ds, self.channels, self.on_bad, self.labelled, self.cache = ds, int(channels), on_bad, bool(labelled), bool(cache)
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        names = list(getattr(ds, "classes", []) or [])
        ids = list(getattr(ds, "class_ids", None) or range(len(names)))
        if classes is not None and names and list(classes) != names:
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise DatasetError(f"classes {unknown} are not among the model's classes {list(classes)}", getattr(ds, "root", None),
                                   "use data with the training classes")
            ids_by_name = dict(zip(names, ids, strict=True))
            self.lut = np.full(256, -1, dtype=np.int64)
            for pos, n in enumerate(classes):
                if n in ids_by_name:
                    self.lut[ids_by_name[n]] = pos
            self.lut[IGNORE_INDEX] = IGNORE_INDEX
        else:
            self.lut = id_lut(ids)
        try:
            self.paths = list(ds.paths())
        except Exception:
            self.paths = [str(i) for i in range(len(ds))]
        self._mem: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def _decode(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.ds[i]
        img = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)
        if img.shape[0] != self.channels:
            img = img[:1].expand(3, -1, -1) if self.channels == 3 else img.float().mean(0, keepdim=True).round().to(torch.uint8)
        if tuple(img.shape[-2:]) != self.size:
            img = F.interpolate(img[None].float(), size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
            img = img.round().clamp(0, 255).to(torch.uint8)
        mask = None
        if self.labelled and s.target is not None:
            m = self.lut[np.asarray(s.target, dtype=np.uint8)]
            if (m < 0).any():
                bad = sorted(set(np.asarray(s.target)[m < 0].tolist()))[:5]
                raise DatasetError(f"mask ids {bad} are not classes", getattr(self.ds, "root", None), f"fix the mask of {s.path}")
            mask = torch.from_numpy(m)
            if tuple(mask.shape) != self.size:
                mask = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
        return img.contiguous(), mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            if self.cache and i in self._mem:
                img, mask = self._mem[i]
            else:
                img, mask = self._decode(i)
                if self.cache:
                    self._mem[i] = (img, mask)
            y = mask if mask is not None else torch.full(self.size, IGNORE_INDEX, dtype=torch.long)
            return {"x": img.float().div(255.0), "y": y, "index": int(i), "ok": True, "path": self.paths[i], "error": ""}
        except ShiftkitError as exc:
            if self.on_bad == "fail" or isinstance(exc, DatasetError):
                raise
            return {"x": torch.zeros((self.channels, *self.size)), "y": torch.full(self.size, IGNORE_INDEX, dtype=torch.long),
                    "index": int(i), "ok": False, "path": self.paths[i], "error": str(exc)}

    def preload(self, progress: bool = True, desc: str = "decoding") -> SegTensors:
        """Decode everything once into memory (sets cache=True)."""
        from tqdm import tqdm

        self.cache = True
        for i in tqdm(range(len(self)), desc=desc, file=sys.stderr, disable=not progress, leave=False):
            if i not in self._mem:
                self._mem[i] = self._decode(i)
        return self


def collate_seg(items: list[dict]) -> dict:
    """Like loaders.collate, with "y" stacked as (N, H, W) masks (or (N,) ints for classification items)."""
    good = [it for it in items if it["ok"]]
    bad = [(it["path"], it["error"]) for it in items if not it["ok"]]
    if not good:
        return {"x": None, "y": None, "index": None, "path": [], "bad": bad}
    ys = [it["y"] for it in good]
    y = torch.stack(ys) if torch.is_tensor(ys[0]) else torch.tensor(ys, dtype=torch.long)
    return {"x": torch.stack([it["x"] for it in good]), "y": y,
            "index": torch.tensor([it["index"] for it in good], dtype=torch.long), "path": [it["path"] for it in good],
            "bad": bad}


def seg_batches(dataset, batch_size: int, workers: int = 0):
    """Sequential batches over a whole dataset with `collate_seg` (evaluation, pseudo labelling)."""
    n = len(dataset)
    batches = [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=int(workers), collate_fn=collate_seg)
