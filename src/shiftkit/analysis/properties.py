"""Per-image properties that explain a domain shift in words (brighter, blurrier, noisier...).

Pure functions take a batch ``x`` of shape (B, C, H, W), float in [0, 1], C in {1, 3} (RGB), on
any device, and return a (B,) tensor. Every value is in the units of the [0, 1] image (multiply
by 255 for the 8-bit scale some papers use). Luminance is ITU-R BT.601, as in PIL's "L" mode:
``Y = 0.299 R + 0.587 G + 0.114 B``.

`compute_properties` streams a dataset (or any iterable of `Sample`) through these functions and
keeps only a `PropertyTable`. Size properties (width, height, aspect ratio) and the object area
fraction come from the original image and target; pixel properties are computed at a fixed
working resolution (the short side resized to `work_size`, default 128) so that datasets of
different resolutions are compared like for like and the cost per image is bounded (smaller
images are upscaled, so their sharpness and noise are those of the upscaled image; the long side
is capped at 4x the short side).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftkit.data.sample import Boxes, Sample
from shiftkit.errors import DatasetError, ImageError, ShiftkitError
from shiftkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

PHOTOMETRIC_PROPERTIES = ("brightness", "contrast", "sharpness", "saturation", "colourfulness", "noise", "entropy")
# orientation: the one geometric pixel property; photometric transfers cannot move it
PIXEL_PROPERTIES = PHOTOMETRIC_PROPERTIES + ("orientation",)
SIZE_PROPERTIES = ("width", "height", "aspect_ratio")
TARGET_PROPERTIES = ("object_area",)
PROPERTIES = PIXEL_PROPERTIES + SIZE_PROPERTIES + TARGET_PROPERTIES

# Bump when a formula or the working-resolution pipeline changes: old cache files are ignored.
CACHE_VERSION = 4
_BT601 = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- pure tensor maths
def _check(x: torch.Tensor, min_size: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a (B, C, H, W) batch with C in {{1, 3}}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got {x.dtype}; divide uint8 images by 255")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}, got {x.shape[2]}x{x.shape[3]}")


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma ``Y = 0.299 R + 0.587 G + 0.114 B``; a 1-channel batch is returned as is."""
    _check(x)
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(_BT601).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Mean luminance ``mean(Y)``."""
    return luminance(x).mean(dim=(1, 2, 3))


def contrast(x: torch.Tensor) -> torch.Tensor:
    """RMS contrast: population standard deviation of luminance ``sqrt(mean((Y - mean Y)^2))``."""
    return luminance(x).std(dim=(1, 2, 3), correction=0)


def _laplacian(y: torch.Tensor) -> torch.Tensor:
    """Valid 3x3 Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]`` by slicing: (B, 1, H-2, W-2).

    Slices instead of `conv2d`: a 1-channel 3x3 stencil is several times faster this way on CPU.
    """
    c = y[:, :, 1:-1, 1:-1]
    return y[:, :, :-2, 1:-1] + y[:, :, 2:, 1:-1] + y[:, :, 1:-1, :-2] + y[:, :, 1:-1, 2:] - 4.0 * c


def _second_diff_2d(y: torch.Tensor) -> torch.Tensor:
    """Valid ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (= outer([1,-2,1], [1,-2,1])), separably: (B, 1, H-2, W-2)."""
    dx = y[:, :, :, :-2] - 2.0 * y[:, :, :, 1:-1] + y[:, :, :, 2:]
    return dx[:, :, :-2] - 2.0 * dx[:, :, 1:-1] + dx[:, :, 2:]


def _sobel(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid Sobel derivatives (gx, gy), each (B, H-2, W-2): ``[1,2,1]^T [-1,0,1]`` and its transpose."""
    y = y[:, 0]
    dx = y[:, :, 2:] - y[:, :, :-2]
    gx = dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:]
    dy = y[:, 2:] - y[:, :-2]
    gy = dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:]
    return gx, gy


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of luminance over the valid interior.

    ``L = Y * [[0,1,0],[1,-4,1],[0,1,0]]`` (no padding), ``sharpness = mean((L - mean L)^2)``.
    Blur lowers it; noise raises it too (read it together with `noise`).
    """
    _check(x, 3)
    return _laplacian(luminance(x)).var(dim=(1, 2, 3), correction=0)


def orientation(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Orientation log ratio ``log((mean|dY/dx| + eps) / (mean|dY/dy| + eps))`` of luminance, from
    forward differences. > 0 when structure runs vertically (stripes across x), < 0 when it runs
    horizontally; a quarter turn negates it and flips keep it, which is how `analysis.symmetry`
    tells whether rot90 is a symmetry of the data. It is also a drift property (turned cameras)."""
    _check(x, 2)
    y = luminance(x)
    gx = (y[..., :, 1:] - y[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    gy = (y[..., 1:, :] - y[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return torch.log((gx + eps) / (gy + eps))


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation ``S = (max(R,G,B) - min(R,G,B)) / max(R,G,B)`` (0 where max = 0); 0 for gray."""
    _check(x)
    if x.shape[1] == 1:
        return x.new_zeros(x.shape[0])
    mx, mn = x.amax(dim=1), x.amin(dim=1)
    s = torch.where(mx > 0, (mx - mn) / mx.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(mx))
    return s.mean(dim=(1, 2))


def colourfulness(x: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colourfulness on [0, 1] values (x255 for the paper's scale).

    ``rg = R - G``, ``yb = (R + G)/2 - B``,
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` (population std); 0 for gray.
    """
    _check(x)
    if x.shape[1] == 1:
        return x.new_zeros(x.shape[0])
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    dims = (1, 2)
    s = (rg.var(dim=dims, correction=0) + yb.var(dim=dims, correction=0)).sqrt()
    m = (rg.mean(dim=dims) ** 2 + yb.mean(dim=dims) ** 2).sqrt()
    return s + 0.3 * m


def noise(x: torch.Tensor) -> torch.Tensor:
    """Immerkaer's fast noise standard deviation estimate on luminance.

    ``sigma = sqrt(pi/2) / (6 (W-2) (H-2)) * sum |Y * N|`` with
    ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]`` over the valid interior. Exact in expectation for
    additive white Gaussian noise on a locally planar image; texture inflates it.
    """
    _check(x, 3)
    r = _second_diff_2d(luminance(x)).abs()
    h, w = x.shape[2] - 2, x.shape[3] - 2
    return r.sum(dim=(1, 2, 3)) * (math.sqrt(math.pi / 2.0) / (6.0 * h * w))


def luminance_histogram(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """(B, bins) counts of luminance quantised as ``clamp(round(Y * (bins - 1)), 0, bins - 1)``.

    Batched with one `bincount` over ``bin + bins * image_index``: no loop over images or pixels.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    y = luminance(x)
    b = y.shape[0]
    q = (y.flatten(1) * (bins - 1)).round().clamp(0, bins - 1).long()
    q = q + torch.arange(b, device=y.device).unsqueeze(1) * bins
    return torch.bincount(q.flatten(), minlength=b * bins).view(b, bins)


def entropy(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Shannon entropy in bits of the luminance histogram: ``H = -sum_k p_k log2 p_k`` (0 log 0 = 0).

    With 256 bins an 8-bit image's grey levels map one to one onto bins; range [0, 8].
    """
    counts = luminance_histogram(x, bins).to(x.dtype)
    p = counts / counts.sum(dim=1, keepdim=True)
    logp = torch.where(p > 0, p.log2(), torch.zeros_like(p))
    return -(p * logp).sum(dim=1)


def image_properties(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """All pixel properties of a batch (see `PIXEL_PROPERTIES`), luminance computed once."""
    _check(x, 3)
    y = luminance(x)
    return {
        "brightness": y.mean(dim=(1, 2, 3)),
        "contrast": y.std(dim=(1, 2, 3), correction=0),
        "sharpness": sharpness(y),
        "saturation": saturation(x),
        "colourfulness": colourfulness(x),
        "noise": noise(y),
        "entropy": entropy(y),
        "orientation": orientation(y),
    }


def mask_object_fraction(masks: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
    """(B, H, W) class-id masks -> (B,) fraction of pixels that are objects: ``mask != 0`` and ``!= ignore``."""
    if masks.ndim != 3:
        raise ValueError(f"expected (B, H, W) masks, got shape {tuple(masks.shape)}")
    obj = masks != 0
    if ignore_index is not None:
        obj &= masks != ignore_index
    return obj.flatten(1).float().mean(dim=1)


def boxes_union_fraction(xyxy: np.ndarray, width: int, height: int) -> float:
    """Area of the union of boxes (clipped to the image) divided by ``width * height``.

    Exact, by coordinate compression: the distinct box edges cut the image into at most
    (2N+1)^2 cells; a cell counts once if any box covers it.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return 0.0
    x0, x1 = np.clip(b[:, 0], 0, width), np.clip(b[:, 2], 0, width)
    y0, y1 = np.clip(b[:, 1], 0, height), np.clip(b[:, 3], 0, height)
    keep = (x1 > x0) & (y1 > y0)
    if not keep.any():
        return 0.0
    x0, x1, y0, y1 = x0[keep], x1[keep], y0[keep], y1[keep]
    xs, ys = np.unique(np.concatenate([x0, x1])), np.unique(np.concatenate([y0, y1]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # cell centres
    inx = (cx[None, :] > x0[:, None]) & (cx[None, :] < x1[:, None])  # (N, nx)
    iny = (cy[None, :] > y0[:, None]) & (cy[None, :] < y1[:, None])  # (N, ny)
    covered = (iny[:, :, None] & inx[:, None, :]).any(axis=0)  # (ny, nx)
    area = (np.diff(ys)[:, None] * np.diff(xs)[None, :] * covered).sum()
    return float(area / (width * height))


def object_area_fraction(target: Any, width: int, height: int, ignore_index: int | None = 255) -> float:
    """Object area fraction of one sample's target: masks and boxes as above; NaN for class ids/None."""
    if isinstance(target, Boxes):
        return boxes_union_fraction(target.xyxy, width, height)
    if isinstance(target, np.ndarray) and target.ndim == 2:
        return float(mask_object_fraction(torch.from_numpy(np.ascontiguousarray(target))[None], ignore_index)[0])
    return float("nan")


# --------------------------------------------------------------------------- "pretrained-free" features
COLOUR_BINS = 16
THUMB = 16
ORIENT_BINS = 9
ORIENT_GRID = 2
FEATURE_DIM = 3 * COLOUR_BINS + THUMB * THUMB + ORIENT_BINS * ORIENT_GRID * ORIENT_GRID


def simple_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 340) features that need no pretrained network, for the domain classifier.

    - colour histograms: 16 bins per RGB channel (gray is replicated), each summing to 1 (48);
    - the luminance thumbnail: area-averaged to 16x16 (256);
    - gradient orientation histograms: unsigned Sobel orientation in 9 bins over [0, pi),
      weighted by gradient magnitude, in a 2x2 grid of cells, divided by the total magnitude (36).
    """
    _check(x, 3)
    b, c = x.shape[:2]
    q = (x.flatten(2) * COLOUR_BINS).to(torch.int64).clamp_(0, COLOUR_BINS - 1)  # (B, C, HW); trunc = floor for x >= 0
    q += torch.arange(b * c, device=x.device).view(b, c, 1) * COLOUR_BINS
    hist = torch.bincount(q.flatten(), minlength=b * c * COLOUR_BINS).view(b, c, COLOUR_BINS).to(x.dtype)
    hist = hist / hist.sum(dim=2, keepdim=True)
    hist = (hist.expand(-1, 3, -1) if c == 1 else hist).flatten(1)  # gray: R = G = B

    y = luminance(x)
    thumb = F.adaptive_avg_pool2d(y, THUMB).flatten(1)

    gx, gy = _sobel(y)
    mag = torch.sqrt(gx * gx + gy * gy)
    ang = torch.atan2(gy, gx).remainder(math.pi)  # unsigned orientation in [0, pi)
    obin = (ang / math.pi * ORIENT_BINS).floor().clamp(0, ORIENT_BINS - 1).long()
    h, w = mag.shape[1:]
    ci = (torch.arange(h, device=x.device) * ORIENT_GRID // h).view(h, 1)
    cj = (torch.arange(w, device=x.device) * ORIENT_GRID // w).view(1, w)
    cell = (ci * ORIENT_GRID + cj).unsqueeze(0)  # (1, h, w)
    n_per = ORIENT_GRID * ORIENT_GRID * ORIENT_BINS
    idx = (cell * ORIENT_BINS + obin) + torch.arange(b, device=x.device).view(b, 1, 1) * n_per
    ohist = torch.zeros(b * n_per, dtype=x.dtype, device=x.device)
    ohist.index_add_(0, idx.flatten(), mag.flatten())
    ohist = ohist.view(b, n_per)
    ohist = ohist / ohist.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.cat([hist, thumb, ohist], dim=1)


# --------------------------------------------------------------------------- the table
@dataclass
class PropertyTable:
    """One row per image: `paths` and numpy float64 `columns` (see `PROPERTIES`).

    `features` is the optional (N, FEATURE_DIM) float32 matrix of `simple_features`.
    """

    paths: list[str]
    columns: dict[str, np.ndarray]
    features: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.paths)
        for k, v in self.columns.items():
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (n,):
                raise ValueError(f"column {k!r} has shape {v.shape}, expected ({n},)")
            self.columns[k] = v
        if self.features is not None and len(self.features) != n:
            raise ValueError(f"features have {len(self.features)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def defined(self) -> list[str]:
        """Columns with at least one finite value (object_area is NaN for classification)."""
        return [k for k, v in self.columns.items() if np.isfinite(v).any()]

    def matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        names = list(names) if names is not None else self.defined()
        return np.stack([self.columns[k] for k in names], axis=1) if names else np.zeros((len(self), 0))

    def to_csv(self, path: str | os.PathLike) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", *self.columns])
        cols = list(self.columns.values())
        for i, p in enumerate(self.paths):
            w.writerow([p, *(_fmt(c[i]) for c in cols)])
        atomic_write_text(path, buf.getvalue())

    def to_json(self, path: str | os.PathLike) -> None:
        rows = [
            {"path": p, **{k: (None if not np.isfinite(v[i]) else float(v[i])) for k, v in self.columns.items()}}
            for i, p in enumerate(self.paths)
        ]
        atomic_write_json(path, {"meta": self.meta, "rows": rows})

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> PropertyTable:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or rows[0][:1] != ["path"]:
            raise ShiftkitError("not a property table (first column must be `path`)", path, "write it with PropertyTable.to_csv")
        names = rows[0][1:]
        body = rows[1:]
        cols = {k: np.array([float(r[j + 1]) if r[j + 1] else np.nan for r in body]) for j, k in enumerate(names)}
        return cls([r[0] for r in body], cols)


def _fmt(v: float) -> str:
    return "" if not np.isfinite(v) else repr(float(v))


# --------------------------------------------------------------------------- streaming computation
def _working_size(h: int, w: int, work_size: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """Short side -> work_size, aspect kept up to `max_aspect` (the long side is capped beyond)."""
    scale = work_size / min(h, w)
    nh, nw = max(3, round(h * scale)), max(3, round(w * scale))
    cap = round(work_size * max_aspect)
    return min(nh, cap), min(nw, cap)


def _prepare(sample: Sample, work_size: int, ignore_index: int | None) -> dict[str, Any]:
    """Everything a batch needs from one sample, small enough to pass between processes."""
    from PIL import Image

    img = sample.image
    h, w = img.shape[:2]
    nh, nw = _working_size(h, w, work_size)
    if (nh, nw) != (h, w):
        pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
        small = np.asarray(pil.resize((nw, nh), Image.BILINEAR))  # PIL filters with a widened support when shrinking
        small = small.reshape(nh, nw, img.shape[2])
    else:
        small = img
    return {
        "small": np.ascontiguousarray(small),
        "width": w,
        "height": h,
        "object_area": object_area_fraction(sample.target, w, h, ignore_index),
    }


class _Items(torch.utils.data.Dataset):
    """Map-style view for a DataLoader: decode + resize (+ hash) in worker processes."""

    def __init__(self, ds: Any, indices: list[int], work_size: int, ignore_index: int | None,
                 root: Path | None, paths: list[str] | None, on_error: str):
        self.ds, self.indices, self.work_size, self.ignore_index = ds, indices, work_size, ignore_index
        self.root, self.paths, self.on_error = root, paths, on_error

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, dict | None, ShiftkitError | None]:
        i = self.indices[k]
        try:
            item = _prepare(self.ds[i], self.work_size, self.ignore_index)
        except ShiftkitError as exc:  # returned, not raised: a worker would wrap it in a traceback
            return i, None, exc
        if self.root is not None and self.paths is not None:
            item["sha256"] = sha256_file(self.root / self.paths[i])
        return i, item, None


def _is_dataset(ds: Any) -> bool:
    return all(hasattr(ds, a) for a in ("root", "paths", "__getitem__", "__len__"))


def _compute_batch(items: list[dict], device: torch.device, features: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Pixel properties (and features) of prepared items; equal-size images go through as one batch."""
    n = len(items)
    out = {k: np.empty(n) for k in PIXEL_PROPERTIES}
    feats = np.empty((n, FEATURE_DIM), dtype=np.float32) if features else None
    groups: dict[tuple, list[int]] = {}
    for j, it in enumerate(items):
        groups.setdefault(it["small"].shape, []).append(j)
    for shape, idx in groups.items():
        arr = np.stack([items[j]["small"] for j in idx])  # (b, h, w, c) uint8
        x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        props = image_properties(x)
        for k, v in props.items():
            out[k][idx] = v.double().cpu().numpy()
        if feats is not None:
            # features at half the working resolution: the thumbnail is 16x16 anyway, histograms
            # barely change, and it costs a quarter
            xf = F.avg_pool2d(x, 2) if min(shape[:2]) >= 32 else x
            feats[idx] = simple_features(xf).cpu().numpy()
    return out, feats


def compute_properties(
    ds: Any,
    batch_size: int = 64,
    cache: bool = True,
    progress: bool = True,
    *,
    workers: int = 0,
    work_size: int = 128,
    device: str | torch.device = "cpu",
    features: bool = False,
    on_error: str = "raise",
    errors: list | None = None,
    desc: str = "properties",
    threads: int | None = 1,
) -> PropertyTable:
    """Stream `ds` (a shiftkit Dataset or any iterable of `Sample`) into a `PropertyTable`.

    Memory stays flat: only the table is kept. For a Dataset (has `root` and `paths()`), rows are
    cached under ``cache_dir()/properties/``, keyed by the image file's SHA-256 (with its size and
    mtime as a fast pre-key), so a second call recomputes only new or changed files. For
    segmentation/detection a row is also keyed by its target (mask file size/mtime, or a digest
    of its boxes; see `_target_keys`), so an edited mask recomputes that row. Rows of files not
    listed now (another subset of the same root) stay in the cache. An iterable of Samples is never cached. `workers` > 0 decodes in DataLoader worker processes.
    On CPU the tensor maths runs with `threads` intra-op threads (default 1, restored after):
    these ops are small and memory-bound, and on a busy machine torch's thread pool made them
    10-20x slower; parallelism comes from the decoding workers instead (None keeps torch's setting).
    """
    if batch_size < 1:
        raise ShiftkitError(f"batch_size must be >= 1, got {batch_size}")
    if work_size < 8:
        raise ShiftkitError(f"work_size must be >= 8, got {work_size}")
    if workers < 0:
        raise ShiftkitError(f"workers must be >= 0, got {workers}")
    if on_error not in ("raise", "skip"):
        raise ShiftkitError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    from shiftkit.device import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    meta = {"work_size": work_size, "version": CACHE_VERSION}
    with _cpu_threads(threads if dev.type == "cpu" else None):
        if _is_dataset(ds):
            return _compute_dataset(ds, batch_size, cache, progress, workers, work_size, dev, features, on_error, errors, desc, meta)
        return _compute_iterable(ds, batch_size, progress, work_size, dev, features, on_error, errors, desc, meta)


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress(total: int | None, enabled: bool, desc: str):
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", file=sys.stderr, leave=False)


def _compute_iterable(samples: Iterable[Sample], batch_size, progress, work_size, dev, features, on_error, errors, desc, meta) -> PropertyTable:
    try:
        it = iter(samples)
    except TypeError:
        raise ShiftkitError(f"expected a dataset or an iterable of Sample, got {type(samples).__name__}") from None
    total = len(samples) if hasattr(samples, "__len__") else None
    paths: list[str] = []
    cols: dict[str, list] = {k: [] for k in PROPERTIES}
    feats: list[np.ndarray] = []
    pending: list[dict] = []

    def flush():
        vals, f = _compute_batch(pending, dev, features)
        for k in PIXEL_PROPERTIES:
            cols[k].extend(vals[k].tolist())
        for it_ in pending:
            cols["width"].append(it_["width"])
            cols["height"].append(it_["height"])
            cols["aspect_ratio"].append(it_["width"] / it_["height"])
            cols["object_area"].append(it_["object_area"])
        if f is not None:
            feats.append(f)
        pending.clear()

    with _progress(total, progress, desc) as bar:
        for k, s in enumerate(it):
            if not isinstance(s, Sample):
                raise ShiftkitError(f"item {k} is a {type(s).__name__}, not a shiftkit Sample")
            try:
                item = _prepare(s, work_size, 255)
            except (ShiftkitError, ValueError) as exc:
                if on_error == "raise":
                    raise
                if errors is not None:
                    errors.append(str(exc))
                continue
            paths.append(s.path or f"#{k}")
            pending.append(item)
            if len(pending) >= batch_size:
                flush()
            bar.update(1)
        if pending:
            flush()
    f = np.concatenate(feats) if features and feats else (np.zeros((0, FEATURE_DIM), np.float32) if features else None)
    return PropertyTable(paths, {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, f, meta)


# ---- cache
def _cache_file(root: Path, work_size: int) -> Path:
    from shiftkit.resources import cache_dir

    key = hashlib.sha256(f"{root.resolve()}|{work_size}|v{CACHE_VERSION}".encode()).hexdigest()[:24]
    return cache_dir() / "properties" / f"{key}.npz"


def _target_keys(ds: Any, root: Path, paths: list[str], task: str) -> list[str]:
    """Per row, a short key of what the object-area column depends on (besides the image).

    shiftkit Datasets index their targets without decoding: a mask file is keyed by its path,
    size and mtime; boxes by a digest of their values. Classification/unlabeled rows need none.
    Other dataset objects with masks or boxes fall back to one signature of every file under the
    root that is not a listed image (path, size, mtime), shared by all rows: any edit recomputes all.
    """
    if task not in ("segmentation", "detection"):
        return [""] * len(paths)
    entries = getattr(ds, "entries", None)
    if isinstance(entries, (list, tuple)) and len(entries) == len(paths):
        keys = []
        for e in entries:
            mask = getattr(e, "mask", None)
            if mask:
                try:
                    st = (root / mask).stat()
                    keys.append(f"mask:{mask}:{st.st_size}:{st.st_mtime_ns}")
                except OSError:
                    keys.append(f"mask:{mask}:missing")
                continue
            t = getattr(e, "target", None)
            if isinstance(t, Boxes):
                keys.append("boxes:" + hashlib.sha256(t.xyxy.tobytes() + t.labels.tobytes()).hexdigest()[:32])
            elif isinstance(t, np.ndarray):
                keys.append("array:" + hashlib.sha256(np.ascontiguousarray(t).tobytes() + str(t.shape).encode()).hexdigest()[:32])
            else:
                keys.append(f"target:{t!r}"[:200])
        return keys
    listed = set(paths)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel in listed or name == "shiftkit.json":
                continue
            try:
                st = (root / rel).stat()
            except OSError:
                continue
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return ["root:" + h.hexdigest()[:32]] * len(paths)


def _load_cache(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: recompute (the cache is only an optimisation)
    if data.get("names") is None or list(data["names"]) != list(PROPERTIES):
        return None
    return data


def _save_cache(path: Path, rows: dict[str, dict]) -> None:
    paths = sorted(rows)
    buf = io.BytesIO()
    np.savez(
        buf,
        names=np.array(PROPERTIES),
        paths=np.array(paths, dtype=str),
        size=np.array([rows[p]["size"] for p in paths], dtype=np.int64),
        mtime_ns=np.array([rows[p]["mtime_ns"] for p in paths], dtype=np.int64),
        sha256=np.array([rows[p]["sha256"] for p in paths], dtype=str),
        values=np.array([rows[p]["values"] for p in paths], dtype=np.float64).reshape(len(paths), len(PROPERTIES)),
        features=np.array([rows[p]["features"] for p in paths], dtype=np.float32).reshape(len(paths), FEATURE_DIM),
        tkeys=np.array([rows[p]["tkey"] for p in paths], dtype=str),
    )
    atomic_write_bytes(path, buf.getvalue())


def _compute_dataset(ds, batch_size, cache, progress, workers, work_size, dev, features, on_error, errors, desc, meta) -> PropertyTable:
    root = Path(ds.root)
    paths = [str(p) for p in ds.paths()]
    if len(paths) != len(ds):
        raise DatasetError(f"paths() lists {len(paths)} images but len() is {len(ds)}", root)
    task = str(getattr(getattr(ds, "task", None), "value", getattr(ds, "task", "")) or "")
    ignore_index = getattr(ds, "ignore_index", 255)
    stats: list[os.stat_result | None] = []
    failed: set[int] = set()
    for i, p in enumerate(paths):
        try:
            stats.append((root / p).stat())
        except OSError as exc:
            err = ImageError(f"cannot read file ({exc.strerror})", root / p, "check the path and permissions")
            if on_error == "raise":
                raise err from None
            stats.append(None)
            failed.add(i)
            if errors is not None:
                errors.append(str(err))
    tkeys = _target_keys(ds, root, paths, task)
    known: dict[str, dict] = {}  # path -> cached row (pre-key match or content match)
    kept: dict[str, dict] = {}  # cached rows of files not listed now (another subset of the root) that still exist
    cache_path = _cache_file(root, work_size) if cache else None
    data = _load_cache(cache_path) if cache_path is not None else None
    todo: list[int] = []
    if data is not None:
        by_path = {str(p): j for j, p in enumerate(data["paths"])}
        by_hash: dict[tuple[str, str], int] = {(str(h), str(t)): j for j, (h, t) in enumerate(zip(data["sha256"], data["tkeys"], strict=True))}

        def row(j: int, st: os.stat_result, digest: str, tkey: str) -> dict:
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest, "tkey": tkey,
                    "values": data["values"][j], "features": data["features"][j]}

        for i, (p, st, tk) in enumerate(zip(paths, stats, tkeys, strict=True)):
            if st is None:
                continue
            j = by_path.get(p)
            if (j is not None and int(data["size"][j]) == st.st_size and int(data["mtime_ns"][j]) == st.st_mtime_ns
                    and str(data["tkeys"][j]) == tk):
                known[p] = row(j, st, str(data["sha256"][j]), tk)
                continue
            digest = sha256_file(root / p)  # pre-key missed: same content under a new mtime or name?
            j = by_hash.get((digest, tk))
            if j is not None:
                known[p] = row(j, st, digest, tk)
            else:
                todo.append(i)
        listed = set(paths)
        for j, p in enumerate(data["paths"]):
            p = str(p)
            if p in listed:
                continue
            try:
                st = (root / p).stat()
            except OSError:
                continue  # deleted: forget it
            if int(data["size"][j]) == st.st_size and int(data["mtime_ns"][j]) == st.st_mtime_ns:
                kept[p] = row(j, st, str(data["sha256"][j]), str(data["tkeys"][j]))
    else:
        todo = [i for i in range(len(paths)) if i not in failed]
    meta = {**meta, "root": str(root), "task": task, "cached": len(known), "computed": 0}

    new_rows: dict[str, dict] = {}
    if todo:
        loader = torch.utils.data.DataLoader(
            _Items(ds, todo, work_size, ignore_index, root if cache else None, paths, on_error),
            batch_size=batch_size, num_workers=workers, collate_fn=list,
            persistent_workers=False, prefetch_factor=4 if workers else None,
        )
        with _progress(len(paths), progress, desc) as bar:
            bar.update(len(known))
            for batch in loader:
                good = [(i, it) for i, it, err in batch if it is not None]
                for i, it, err in batch:
                    if it is None:
                        if on_error == "raise":
                            raise err
                        failed.add(i)
                        if errors is not None:
                            errors.append(str(err))
                if good:
                    vals, f = _compute_batch([it for _, it in good], dev, True)
                    for j, (i, it) in enumerate(good):
                        v = [*(vals[k][j] for k in PIXEL_PROPERTIES), it["width"], it["height"],
                             it["width"] / it["height"], it["object_area"]]
                        st = stats[i]
                        new_rows[paths[i]] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "tkey": tkeys[i],
                                              "sha256": it.get("sha256", ""), "values": np.array(v), "features": f[j]}
                bar.update(len(batch))
        meta["computed"] = len(new_rows)
    rows = {**known, **new_rows}
    if cache_path is not None and new_rows:
        _save_cache(cache_path, {**kept, **rows})
    keep = [p for i, p in enumerate(paths) if i not in failed]
    values = np.array([rows[p]["values"] for p in keep], dtype=np.float64).reshape(len(keep), len(PROPERTIES))
    cols = {k: values[:, j].copy() for j, k in enumerate(PROPERTIES)}
    feats = np.array([rows[p]["features"] for p in keep], dtype=np.float32).reshape(len(keep), FEATURE_DIM) if features else None
    return PropertyTable(keep, cols, feats, meta)
