"""Features of a frozen backbone, cached on disk so CPU users iterate in seconds.

MobileNetV2 features for 2,624 ELPV cells at 160x160 cost about 45 s on two CPU cores; with a
frozen backbone they never change, so they are computed once and kept. The cache key is
(model: architecture spec + SHA-256 of its weights + input size + pipeline version, image: content
hash). A dataset's image is keyed by the SHA-256 of its file bytes (no decoding needed on a hit);
an in-memory array by the SHA-256 of its pixels. Any change in weights, size or pixels misses.

Pipeline per image: uint8 HxWxC -> float [0, 1] -> bilinear resize (antialiased) to size x size ->
channel fix (gray -> 3 channels by replication, RGB -> gray by mean, as the backbone needs) ->
the backbone's own normalisation -> global average pooled features (B, D).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftkit.device import forward_chunked, resolve_device
from shiftkit.errors import ShiftkitError
from shiftkit.io import atomic_write_bytes
from shiftkit.models.backbones import Backbone

PIPELINE_VERSION = "bilinear-antialias-v1"
_MAX_SHARDS = 16  # merge the shards of one model key past this many


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray | None  # (N,) int64 for classification data, else None
    paths: list[str]
    hashes: list[str]
    from_cache: int = 0  # rows read from the cache
    key: str = ""  # model cache key
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ShiftkitError(f"size must be a positive integer or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def preprocess(images: list[np.ndarray], size: int | tuple[int, int], in_channels: int) -> torch.Tensor:
    """uint8 HxWxC images (any sizes) -> float (B, in_channels, h, w) in [0, 1]."""
    h, w = _size_hw(size)
    out = []
    for img in images:
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (1, 3):
            raise ShiftkitError(f"images must be uint8 HxW, HxWx1 or HxWx3, got {a.dtype} {a.shape}")
        a = np.ascontiguousarray(a) if a.flags.writeable else a.copy()  # torch wants writable memory
        t = torch.from_numpy(a).permute(2, 0, 1)[None].float().div_(255.0)
        if t.shape[-2:] != (h, w):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        if t.shape[1] == 1 and in_channels == 3:
            t = t.expand(-1, 3, -1, -1)
        elif t.shape[1] == 3 and in_channels == 1:
            t = t.mean(dim=1, keepdim=True)
        out.append(t)
    return torch.cat(out) if out else torch.empty(0, in_channels, h, w)


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def model_key(backbone: Backbone, size: int | tuple[int, int]) -> str:
    """Hash of everything that changes a feature: arch spec, weights, input size, pipeline."""
    h = hashlib.sha256()
    spec = {k: v for k, v in backbone.spec.items() if k != "weights"}
    h.update(json.dumps({"spec": spec, "size": _size_hw(size), "pipeline": PIPELINE_VERSION, "norm": backbone.input_normalize}, sort_keys=True, default=str).encode())
    for k, v in backbone.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    from shiftkit.resources import cache_dir

    return cache_dir() / "features"


class FeatureCache:
    """hash -> feature vector for one model key, stored as .npz shards written atomically."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.dir = Path(root) / key[:24]
        self.key = key
        self._rows: dict[str, np.ndarray] = {}
        if self.dir.is_dir():
            for shard in sorted(self.dir.glob("part-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        if str(z["key"]) != key:
                            continue
                        for hsh, row in zip(z["hashes"].tolist(), z["features"], strict=True):
                            self._rows[hsh] = row
                except Exception:  # a damaged shard is only a cache miss
                    continue

    def __contains__(self, hsh: str) -> bool:
        return hsh in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, hsh: str) -> np.ndarray:
        return self._rows[hsh]

    def add(self, hashes: list[str], feats: np.ndarray) -> None:
        if not hashes:
            return
        for hsh, row in zip(hashes, feats, strict=True):
            self._rows[hsh] = row
        self._write(hashes, feats)
        shards = list(self.dir.glob("part-*.npz"))
        if len(shards) > _MAX_SHARDS:
            keys = list(self._rows)
            self._write(keys, np.stack([self._rows[k] for k in keys]), replace=shards)

    def _write(self, hashes: list[str], feats: np.ndarray, replace: list[Path] | None = None) -> None:
        buf = io.BytesIO()
        np.savez(buf, key=np.array(self.key), hashes=np.array(hashes), features=np.asarray(feats, dtype=np.float32))
        atomic_write_bytes(self.dir / f"part-{uuid.uuid4().hex}.npz", buf.getvalue())
        for p in replace or []:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    path: str
    label: int | None
    hash: str
    image: np.ndarray | None = None  # None: decode later through `load`
    load: Any = None


def _array_hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return "px:" + h.hexdigest()


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return "file:" + h.hexdigest()


def _items(data: Any) -> Iterator[_Item]:
    if isinstance(data, (str, os.PathLike)):
        try:
            from shiftkit.data import open_dataset
        except ImportError:
            raise ShiftkitError("reading a dataset folder needs shiftkit.data.open_dataset, which is not available", data) from None
        data = open_dataset(data)
    if hasattr(data, "paths") and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        yield from _dataset_items(data)
        return
    for i, obj in enumerate(data):
        label = None
        path = str(i)
        if hasattr(obj, "image") and hasattr(obj, "target"):  # a Sample
            img, path = obj.image, obj.path or path
            label = obj.target if isinstance(obj.target, (int, np.integer)) else None
        elif isinstance(obj, (tuple, list)) and len(obj) == 2:
            img, label = obj
            label = int(label) if label is not None else None
        else:
            img = obj
        if torch.is_tensor(img):
            img = img.detach().cpu().numpy()
        img = np.asarray(img)
        yield _Item(path, None if label is None else int(label), _array_hash(img), image=img)


def _dataset_items(ds: Any) -> Iterator[_Item]:
    paths = list(ds.paths())
    labels = None
    task = str(getattr(getattr(ds, "task", None), "value", getattr(ds, "task", ""))).lower()
    if hasattr(ds, "labels") and task in ("classification", "task.classification"):
        labels = list(ds.labels())
    root = Path(getattr(ds, "root", "") or "")
    for i, rel in enumerate(paths):
        f = root / rel
        label = labels[i] if labels is not None else None
        if f.is_file():
            yield _Item(str(rel), label, _file_hash(f), load=(ds, i))
        else:  # not a plain file (built in memory, archive): key by pixels
            s = ds[i]
            yield _Item(str(rel), label, _array_hash(s.image), image=s.image)


def _image_of(item: _Item) -> np.ndarray:
    if item.image is not None:
        return item.image
    ds, i = item.load
    return ds[i].image


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(
    backbone: Backbone,
    data: Any,
    size: int | tuple[int, int] = 224,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> FeatureSet:
    """Pooled features (N, D) of every image in `data`, in order, computing only cache misses.

    `data`: a dataset folder path, a `shiftkit.data` Dataset (or anything with paths(),
    __getitem__ and __len__), or an iterable of uint8 HxWxC arrays, Samples or (array, label).
    An unreadable image raises its ImageError (naming the file); to skip bad files, pass
    `ds.subset(good_indices)`. The backbone is put in eval mode and restored afterwards.
    """
    if not isinstance(backbone, Backbone):
        raise ShiftkitError(f"extract_features needs a shiftkit Backbone, got {type(backbone).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ShiftkitError(f"batch_size must be a positive integer, got {batch_size!r}")
    size = _size_hw(size)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    key = model_key(backbone, size)
    cache = FeatureCache(cache_dir or default_cache_dir(), key) if use_cache else None

    items = list(_items(data))
    missing = [i for i, it in enumerate(items) if cache is None or it.hash not in cache]
    # the same image twice is computed once
    todo: dict[str, int] = {}
    for i in missing:
        todo.setdefault(items[i].hash, i)
    computed: dict[str, np.ndarray] = {}

    was_training = backbone.training
    backbone.eval()
    orig_device = next(backbone.parameters()).device
    backbone.to(dev)
    try:
        order = list(todo.values())
        bar = None
        if progress and order:
            from tqdm import tqdm

            bar = tqdm(total=len(order), desc=f"features {backbone.name}", unit="img", file=sys.stderr, leave=False)
        for start in range(0, len(order), batch_size):
            chunk = [items[i] for i in order[start : start + batch_size]]
            x = preprocess([_image_of(it) for it in chunk], size, backbone.in_channels).to(dev)
            f = forward_chunked(backbone.pooled, x).float().cpu().numpy()
            hashes = [it.hash for it in chunk]
            computed.update(zip(hashes, f, strict=True))
            if cache is not None:
                cache.add(hashes, f)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    finally:
        backbone.to(orig_device)
        backbone.train(was_training)

    dim = backbone.out_channels
    feats = np.empty((len(items), dim), dtype=np.float32)
    for i, it in enumerate(items):
        feats[i] = computed[it.hash] if it.hash in computed else cache.get(it.hash)  # type: ignore[union-attr]
    labels = None
    if items and all(it.label is not None for it in items):
        labels = np.array([it.label for it in items], dtype=np.int64)
    return FeatureSet(
        feats, labels, [it.path for it in items], [it.hash for it in items],
        from_cache=len(items) - len(missing), key=key,
        meta={"backbone": backbone.spec, "size": list(size), "pipeline": PIPELINE_VERSION},
    )  # fmt: skip
