"""Image grids for a quick look: rows of images under column titles, saved as one PNG.

Generic on purpose (before/after of a transfer, augmentation samples, predictions): every cell is
letterboxed into a square of `cell` pixels keeping its aspect ratio, gray images are shown as
gray, and text is drawn with PIL's built-in font so nothing depends on installed fonts.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shiftkit.io import atomic_write_bytes

BACKGROUND = (255, 255, 255)
EMPTY = (235, 235, 235)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"grid images must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"grid images must be HxW, HxWx1 or HxWx3, got shape {a.shape}")
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _fit(img: np.ndarray, cell: int) -> Image.Image:
    pil = Image.fromarray(_to_rgb(img))
    scale = cell / max(pil.size)
    size = (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale)))
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
    pil = pil.resize(size, resample)
    canvas = Image.new("RGB", (cell, cell), EMPTY)
    canvas.paste(pil, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return canvas


def _short(text: str, width_px: int, font) -> str:
    if font.getlength(text) <= width_px:
        return text
    while text and font.getlength("..." + text) > width_px:
        text = text[1:]
    return "..." + text


def make_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell: int = 160,
    pad: int = 4,
) -> np.ndarray:
    """Assemble `rows` (lists of uint8 images, None = empty cell) into one uint8 HxWx3 array.

    `titles` label the columns, `row_labels` are written under each row (e.g. file names).
    """
    if not rows:
        raise ValueError("a grid needs at least one row")
    ncol = max(len(r) for r in rows)
    if ncol == 0:
        raise ValueError("a grid needs at least one image")
    if titles is not None and len(titles) != ncol:
        raise ValueError(f"{len(titles)} titles for {ncol} columns")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    if cell < 8:
        raise ValueError(f"cell must be >= 8 pixels, got {cell}")
    font = ImageFont.load_default()
    line = 14
    head = line + pad if titles else 0
    foot = line if row_labels else 0
    width = ncol * (cell + pad) + pad
    height = head + len(rows) * (cell + foot + pad) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if titles:
        for j, t in enumerate(titles):
            draw.text((pad + j * (cell + pad) + 2, pad), _short(str(t), cell - 4, font), fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = head + pad + i * (cell + foot + pad)
        for j in range(ncol):
            img = row[j] if j < len(row) else None
            x = pad + j * (cell + pad)
            canvas.paste(_fit(img, cell) if img is not None else Image.new("RGB", (cell, cell), EMPTY), (x, y))
        if row_labels:
            draw.text((pad + 2, y + cell + 1), _short(str(row_labels[i]), width - 2 * pad - 4, font), fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def save_grid(path: str | os.PathLike, rows, titles=None, row_labels=None, cell: int = 160, pad: int = 4) -> str:
    """`make_grid` written atomically as a PNG at `path`; returns the path as a string."""
    arr = make_grid(rows, titles, row_labels, cell, pad)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
