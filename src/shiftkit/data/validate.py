"""`validate`: find what will break training before it does, streaming over the dataset once.

Checks: unsafe paths; unreadable, zero-byte, truncated, non-image and decompression-bomb files;
stray non-image files; masks missing, of the wrong size or holding unknown ids; boxes outside the
image or degenerate; exact duplicates (SHA-256 of the file bytes) and near duplicates (64-bit
pHash, Hamming distance <= `near_dup_bits`); classes with few samples; class imbalance.
Memory holds one decoded image at a time plus 40 bytes per image (digest + hash).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from shiftkit.data.formats.dataset import Dataset, boxes_of
from shiftkit.data.formats.readers import build_dataset
from shiftkit.data.images import MAX_PIXELS, decode_image, read_mask
from shiftkit.data.sample import Task
from shiftkit.errors import ImageError, ShiftkitError

PROGRESS_MIN = 300  # show a progress bar above this many images
BOX_TOL = 1e-3  # px; YOLO's 6-decimal rounding must not look like a box outside the image


@dataclass
class Problem:
    code: str
    path: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.code}  {self.path}: {self.message} ({self.fix})"


@dataclass
class ValidationReport:
    root: str
    format: str
    task: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.code for p in self.problems).items()))

    def to_dict(self) -> dict:
        return {
            "root": self.root, "format": self.format, "task": self.task, "ok": self.ok,
            "problem_counts": self.counts(), "problems": [asdict(p) for p in self.problems], "stats": self.stats,
        }

    def summary(self) -> str:
        s = self.stats
        head = f"{self.root} ({self.format}, {self.task}): {s.get('images', 0)} images"
        if s.get("classes"):
            head += f", {len(s['classes'])} classes"
        if self.ok:
            return head + "; no problems found"
        return head + f"; {len(self.problems)} problems: " + ", ".join(f"{k} x{v}" for k, v in self.counts().items())


def _image_code(exc: ImageError) -> str:
    what = exc.what
    if what.startswith("zero-byte"):
        return "empty-file"
    if what.startswith("not a readable image"):
        return "not-image"
    if what.startswith("decompression bomb"):
        return "decompression-bomb"
    if what.startswith("truncated"):
        return "corrupt-image"
    return "unreadable-image"


def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix: C[k, i] = a_k cos(pi (2i + 1) k / 2n), a_0 = sqrt(1/n), a_k = sqrt(2/n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT32 = _dct_matrix(32)


def phash64(image: np.ndarray) -> int:
    """64-bit perceptual hash: grayscale 32x32 (box filter), 2-D DCT F = C G C^T, keep the 8x8
    lowest frequencies, bit = F[u, v] > median(F[:8, :8]) (row-major, F[0, 0] is the top bit).

    A few bits of Hamming distance mean "the same picture" after rescaling, recompression or a
    brightness change. Chosen over a 9x8 dHash after measuring on ELPV: dHash put 29% of the
    (distinct, look-alike) cells within 4 bits of another cell, pHash separates them while
    keeping resized+recompressed+brightened copies within 4 bits.
    """
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    g = np.asarray(Image.fromarray(arr).convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    f = (_DCT32 @ g @ _DCT32.T)[:8, :8]
    f[np.abs(f) < 1e-6] = 0.0  # float noise of exactly-zero coefficients (flat images) must not flip bits
    bits = (f > np.median(f)).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def near_duplicates(hashes: np.ndarray, max_bits: int, block_elems: int = 1 << 20) -> list[tuple[int, int, int]]:
    """(j, i, distance) for each j whose closest earlier-indexed match i is within `max_bits`.

    Vectorised in row blocks of about `block_elems` pairs: 50k hashes are 1.25e9 pairs, seconds
    with numpy's popcount, and memory stays at a few tens of MB.
    """
    h = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    n = len(h)
    out = []
    rows = max(1, min(n, block_elems // max(n, 1)))
    upper = np.triu(np.ones((rows, rows), dtype=bool))  # j compares only with earlier images i < j
    for start in range(1, n, rows):
        stop = min(n, start + rows)
        d = _popcount(h[start:stop, None] ^ h[None, :stop])
        d[:, start:stop][upper[: stop - start, : stop - start]] = 255
        j = np.arange(start, stop)
        best = d.argmin(axis=1)
        dist = d[np.arange(len(j)), best]
        for jj, ii, dd in zip(j[dist <= max_bits], best[dist <= max_bits], dist[dist <= max_bits], strict=True):
            out.append((int(jj), int(ii), int(dd)))
    return out


def validate(
    path: str | os.PathLike,
    task: Task | str | None = None,
    few_samples: int = 5,
    imbalance_ratio: float = 10.0,
    near_dup_bits: int | None = 4,
    max_pixels: int = MAX_PIXELS,
    progress: bool | None = None,
) -> ValidationReport:
    """Check a dataset; returns every problem found (never stops at the first).

    near_dup_bits: Hamming threshold on 64-bit pHashes (None or negative: skip near duplicates).
    progress: tqdm bar on stderr; default on above PROGRESS_MIN images.
    Raises DatasetError only when `path` cannot be read as a dataset at all.
    """
    if not isinstance(few_samples, int) or few_samples < 0:
        raise ShiftkitError(f"few_samples must be an integer >= 0, got {few_samples!r}", None, "pass e.g. --few-samples 5")
    if not imbalance_ratio >= 1:
        raise ShiftkitError(f"imbalance_ratio must be >= 1, got {imbalance_ratio!r}", None, "pass e.g. --imbalance-ratio 10")
    if near_dup_bits is not None and near_dup_bits > 64:
        raise ShiftkitError(f"near_dup_bits must be <= 64, got {near_dup_bits}", None, "pass 0..64, or -1 to skip")
    problems: list[Problem] = []

    def report(code, where, what, fix, fatal=True, cls=None):
        problems.append(Problem(code, str(where), what, fix))

    ds = build_dataset(path, task, max_pixels, report)
    root = ds.root
    n = len(ds)
    show = progress if progress is not None else n > PROGRESS_MIN
    digests: dict[bytes, int] = {}
    hashes: list[int] = []
    hash_owner: list[int] = []
    sizes: list[tuple[int, int]] = []
    channels: Counter = Counter()
    seg_counts = np.zeros(256, dtype=np.int64)
    total_bytes = 0
    readable = 0
    bad_ids_ok = set(ds.class_ids) | ({ds.ignore_index} if ds.ignore_index is not None else set())

    for idx, e in enumerate(tqdm(ds.entries, desc="validate", unit="img", file=sys.stderr, disable=not show)):
        full = root / e.path
        try:
            data = full.read_bytes()
        except OSError as exc:
            problems.append(Problem("unreadable-image", str(full), f"cannot read file ({exc.strerror})", "check the file and its permissions"))
            continue
        total_bytes += len(data)
        digest = hashlib.sha256(data).digest()
        first = digests.setdefault(digest, idx)
        if first != idx and data:
            problems.append(Problem("duplicate", str(full), f"same bytes as {ds.entries[first].path}", "delete one copy (duplicates leak between splits)"))
        try:
            image, meta = decode_image(data, full, max_pixels)
        except ImageError as exc:
            problems.append(Problem(_image_code(exc), str(full), exc.what, exc.fix or "re-export or delete it"))
            continue
        readable += 1
        h, w = image.shape[:2]
        sizes.append((h, w))
        channels[int(image.shape[2])] += 1
        if first == idx and near_dup_bits is not None and near_dup_bits >= 0:
            hashes.append(phash64(image))
            hash_owner.append(idx)
        if ds.task is Task.SEGMENTATION:
            mpath = root / e.mask
            try:
                mask = read_mask(mpath, max_pixels)
            except ImageError as exc:
                problems.append(Problem("mask-unreadable", str(mpath), exc.what, exc.fix or "re-export the mask"))
                continue
            if mask.shape != (h, w):
                problems.append(Problem("mask-size", str(mpath), f"mask is {mask.shape[1]}x{mask.shape[0]}, image {e.path} is {w}x{h}",
                                        "re-export the mask at the image's size"))
                continue
            present = np.bincount(mask.reshape(-1), minlength=256) > 0
            seg_counts += present
            bad = [i for i in np.flatnonzero(present).tolist() if i not in bad_ids_ok]
            if bad:
                problems.append(Problem("mask-ids", str(mpath), f"ids {bad} are not classes (known: {ds.class_ids}, ignore {ds.ignore_index})",
                                        "fix the mask or add the ids to classes.txt/classes.json"))
        elif ds.task is Task.DETECTION:
            rec = e.extra.get("coco_image") or {}
            if "width" in rec and "height" in rec and (rec["width"], rec["height"]) != (w, h):
                problems.append(Problem("size-mismatch", str(full), f"COCO says {rec['width']}x{rec['height']}, the image is {w}x{h}",
                                        "fix width/height in the COCO file (boxes may be in the wrong frame)"))
            b = boxes_of(e, w, h)
            if len(b):
                x = b.xyxy.astype(np.float64)
                degenerate = (x[:, 2] - x[:, 0] <= 0) | (x[:, 3] - x[:, 1] <= 0)
                outside = ~degenerate & ((x[:, 0] < -BOX_TOL) | (x[:, 1] < -BOX_TOL) | (x[:, 2] > w + BOX_TOL) | (x[:, 3] > h + BOX_TOL))
                for flag, code, what, fix in (
                    (degenerate, "box-degenerate", "boxes with width or height <= 0", "drop them or fix their coordinates"),
                    (outside, "box-outside", f"boxes outside the {w}x{h} image", "clip them to the image or fix the frame"),
                ):
                    if flag.any():
                        k = int(np.flatnonzero(flag)[0])
                        problems.append(Problem(code, str(full), f"{int(flag.sum())} {what}, e.g. xyxy {np.round(x[k], 2).tolist()}", fix))

    near = []
    if hashes and near_dup_bits is not None and near_dup_bits >= 0:
        for j, i, d in near_duplicates(np.asarray(hashes, dtype=np.uint64), near_dup_bits):
            a, b = ds.entries[hash_owner[j]], ds.entries[hash_owner[i]]
            near.append((a.path, b.path, d))
            problems.append(Problem("near-duplicate", str(root / a.path), f"looks like {b.path} (pHash distance {d}/64)",
                                    "check that they are not the same picture; keep one"))

    counts, unit = _class_counts(ds, seg_counts)
    if counts:
        for name, c in counts.items():
            if c < few_samples:
                where = root / name if ds.format == "imagefolder" else root
                problems.append(Problem("few-samples", str(where), f"class {name!r} has {c} {unit} (< {few_samples})",
                                        "add samples, merge the class, or lower --few-samples"))
        hi, lo = max(counts.values()), min(counts.values())
        ratio = float("inf") if lo == 0 else hi / lo
        if len(counts) > 1 and ratio > imbalance_ratio:
            big = max(counts, key=counts.get)
            small = min(counts, key=counts.get)
            problems.append(Problem("class-imbalance", str(root), f"{big!r} has {hi} {unit}, {small!r} {lo} (ratio {ratio:.1f} > {imbalance_ratio:g})",
                                    "rebalance (collect, resample or weight the loss) or raise --imbalance-ratio"))
    stats = {
        "images": n,
        "readable": readable,
        "bytes": total_bytes,
        "classes": list(ds.classes),
        "class_counts": counts,
        "count_unit": unit,
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "min_hw": list(min(sizes)) if sizes else None,
        "max_hw": list(max(sizes)) if sizes else None,
        "exact_duplicates": n - len(digests) if n else 0,
        "near_duplicates": len(near),
    }
    return ValidationReport(str(root), ds.format, ds.task.value, problems, stats)


def _class_counts(ds: Dataset, seg_counts: np.ndarray) -> tuple[dict[str, int], str]:
    if ds.task is Task.CLASSIFICATION:
        return ds.class_counts(), "images"
    if ds.task is Task.DETECTION:
        return ds.class_counts(), "boxes"
    if ds.task is Task.SEGMENTATION:
        return {name: int(seg_counts[cid]) for name, cid in zip(ds.classes, ds.class_ids, strict=True) if 0 <= cid < 256}, "images containing it"
    return {}, ""
