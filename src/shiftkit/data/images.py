"""The only place that decodes and encodes image files.

Decoding is defensive: zero-byte files, non-images, truncated files and decompression bombs raise
`ImageError` naming the file and the fix, instead of a PIL traceback an hour into training.

Conventions (on purpose, see `Sample`):
- EXIF orientation is applied, so pixels (and masks/boxes drawn on them) are upright;
- 16-bit images are reduced to 8 bit by keeping the high byte; `meta["bit_depth"] = 16` lets the
  writer restore a 16-bit file (value * 257);
- RGBA keeps its alpha in `meta["alpha"]` (HxW uint8) and the image is the RGB part;
- palette and LA/grayscale images decode to RGB or 1 channel respectively.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from shiftkit.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# A decompression bomb is refused above this many pixels (about 16k x 16k); override per call.
MAX_PIXELS = 268_435_456
# Our own per-call `max_pixels` check (in `_open`, before any pixel is decoded) replaces PIL's
# global one, which would otherwise refuse images above 179M pixels whatever --max-pixels says.
Image.MAX_IMAGE_PIXELS = None


def is_image_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _open(data: bytes, path: object, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("zero-byte file", path, "re-export or delete it")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises several types for "not an image"
        raise ImageError(f"not a readable image ({type(exc).__name__})", path, "delete it or convert it to PNG/JPEG") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            f"decompression bomb refused: {w}x{h} = {w * h} pixels > limit {max_pixels}",
            path,
            "downscale the file, or raise the limit (max_pixels / --max-pixels) if you trust it",
        )
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"truncated or corrupt image data ({exc})", path, "re-export or delete it") from None
    return img


def decode_image(data: bytes, path: object = "<bytes>", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode bytes to (uint8 HxWxC with C in {1,3}, meta). See the module doc for conventions."""
    img = _open(data, path, max_pixels)
    meta: dict = {"format": (img.format or "").upper(), "mode": img.mode}
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    if orientation not in (None, 1):
        meta["exif_orientation"] = int(orientation)
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            out = arr.astype(np.uint8)
        else:
            meta["bit_depth"] = 16
            out = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return out[:, :, None], meta
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        meta["alpha"] = rgba[:, :, 3].copy()
        if mode == "LA":
            return rgba[:, :, :1].copy(), meta
        return rgba[:, :, :3].copy(), meta
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"))[:, :, None].copy(), meta
    if mode == "F":
        arr = np.asarray(img)
        return np.clip(arr, 0, 255).astype(np.uint8)[:, :, None], meta
    return np.asarray(img.convert("RGB")).copy(), meta


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Read and decode one image file (see `decode_image`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror})", path, "check the path and permissions") from None
    return decode_image(data, path, max_pixels)


def read_mask(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a segmentation mask as HxW uint8 class ids.

    Single-channel PNGs are read as is; palette PNGs give their palette *indices* (the usual
    convention for VOC-style masks), never their colours.
    """
    return read_mask_palette(path, max_pixels)[0]


def read_mask_palette(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[int] | None]:
    """`read_mask` plus the file's palette (flat RGB list) when it is a palette PNG, else None.

    Writers pass the palette back to `encode_mask` so a VOC-style dataset keeps its colours.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read mask ({exc.strerror})", path, "check the path and permissions") from None
    img = _open(data, path, max_pixels)
    if img.mode == "P":
        palette = img.getpalette()
        return np.asarray(img).astype(np.uint8).copy(), (list(palette) if palette else None)
    if img.mode == "L":
        return np.asarray(img).astype(np.uint8).copy(), None
    if img.mode in ("I;16", "I"):
        arr = np.asarray(img)
        if arr.max(initial=0) > 255:
            raise ImageError("mask holds ids above 255", path, "store class ids 0..254 (255 = ignore)")
        return arr.astype(np.uint8), None
    raise ImageError(
        f"mask must be single-channel or palette PNG, got mode {img.mode}",
        path,
        "convert it to an 8-bit single-channel PNG of class ids",
    )


def encode_image(image: np.ndarray, suffix: str = ".png", meta: dict | None = None, quality: int = 95) -> bytes:
    """Encode uint8 HxWxC to bytes in the format of `suffix`, restoring alpha/16-bit from `meta`."""
    meta = meta or {}
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    suffix = suffix.lower()
    alpha = meta.get("alpha")
    if meta.get("bit_depth") == 16 and arr.ndim == 2 and suffix in (".png", ".tif", ".tiff"):
        pil = Image.fromarray(arr.astype(np.uint16) * 257)
    elif alpha is not None and suffix in (".png", ".webp", ".tif", ".tiff") and alpha.shape == arr.shape[:2]:
        rgb = np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr
        mode_rgb = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        pil = mode_rgb.convert("LA") if arr.ndim == 2 else mode_rgb
    else:
        pil = Image.fromarray(arr)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}.get(suffix)
    if fmt is None:
        raise ImageError(f"unknown image suffix {suffix!r}", None, f"use one of {', '.join(IMAGE_SUFFIXES)}")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "PNG":
        kwargs["compress_level"] = 1  # fast; PNG is lossless whatever the level
    pil.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def encode_mask(mask: np.ndarray, palette: list[int] | None = None) -> bytes:
    """Encode an HxW uint8 mask as PNG: palette PNG when `palette` is given, else single-channel."""
    pil = Image.fromarray(np.asarray(mask, dtype=np.uint8), "L")
    if palette is not None:
        pil = pil.convert("P")
        pil.putpalette(palette)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
