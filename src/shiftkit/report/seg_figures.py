"""Segmentation pictures: class-coloured masks, prediction overlays and entropy maps as PNG grids.

One row per image: image | ground truth | prediction | entropy (H(p) / log C, dark = confident),
ground truth and prediction blended over the image; ignored pixels (255) are drawn black.
Grids go through `report.grid.save_grid` (atomic PNG writes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from shiftkit.report.grid import save_grid

IGNORE_INDEX = 255


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: class 0 (background) dark gray, the others evenly spaced hues."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    import colorsys

    out = np.zeros((num_classes, 3), dtype=np.uint8)
    out[0] = (40, 40, 40)
    for c in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb((c - 1) / max(1, num_classes - 1), 0.85, 1.0)
        out[c] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def colorize(mask: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours; ignored pixels black; ids >= num_classes raise."""
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {m.shape}")
    m = m.astype(np.int64)
    ign = m == ignore_index
    if ((m < 0) | (m >= num_classes))[~ign].any():
        raise ValueError(f"mask ids outside [0, {num_classes}) other than {ignore_index}")
    out = palette(num_classes)[np.where(ign, 0, m)]
    out[ign] = 0
    return out


def _image_u8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """CHW float [0, 1] tensor or HxWxC / HxW uint8 array -> HxWx3 uint8."""
    if torch.is_tensor(image):
        x = image.detach().cpu()
        if x.dim() == 3 and x.shape[0] in (1, 3):
            x = x.permute(1, 2, 0)
        a = x.numpy()
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def overlay(image, mask, num_classes: int, alpha: float = 0.55, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """out = (1 - alpha) * image + alpha * colour(mask) on labelled non-background pixels; image elsewhere."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _image_u8(image).astype(np.float32)
    col = colorize(mask, num_classes, ignore_index).astype(np.float32)
    m = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if img.shape[:2] != m.shape:
        raise ValueError(f"image {img.shape[:2]} and mask {m.shape} differ in size")
    fg = ((m != 0) & (m != ignore_index))[..., None]
    out = np.where(fg, (1 - alpha) * img + alpha * col, img)
    out = np.where((m == ignore_index)[..., None], 0.0, out)
    return (out + 0.5).astype(np.uint8)


def entropy_image(probs: torch.Tensor) -> np.ndarray:
    """(C, H, W) probabilities -> HxWx3 uint8 heat map of E = H(p) / log C (magma: black = certain)."""
    from matplotlib import colormaps

    from shiftkit.adapt.seg_losses import entropy_map

    if probs.dim() != 3:
        raise ValueError(f"probs must be (C, H, W), got {tuple(probs.shape)}")
    e = entropy_map(probs[None].float())[0].clamp(0, 1).cpu().numpy()
    return (colormaps["magma"](e)[..., :3] * 255 + 0.5).astype(np.uint8)


def prediction_rows(images: Sequence, probs: torch.Tensor, masks: Sequence | None, num_classes: int) -> list[list]:
    """Grid rows [image, ground truth overlay (or None), prediction overlay, entropy map] per image."""
    if probs.dim() != 4 or probs.shape[0] != len(images):
        raise ValueError(f"probs must be (N, C, H, W) with N = {len(images)} images, got {tuple(probs.shape)}")
    rows = []
    pred = probs.argmax(1)
    for i, img in enumerate(images):
        gt = None if masks is None or masks[i] is None else overlay(img, masks[i], num_classes)
        rows.append([_image_u8(img), gt, overlay(img, pred[i], num_classes), entropy_image(probs[i])])
    return rows


def save_prediction_grid(path: str | os.PathLike, images: Sequence, probs: torch.Tensor, masks: Sequence | None = None,
                         num_classes: int | None = None, row_labels: Sequence[str] | None = None, cell: int = 128) -> str:
    """PNG grid: one row per image (see the module doc). Use it per domain (source rows, target rows)."""
    c = int(num_classes or probs.shape[1])
    return save_grid(path, prediction_rows(images, probs, masks, c), ["image", "ground truth", "prediction", "entropy"],
                     row_labels, cell)


def save_domain_grid(path: str | os.PathLike, domains: dict[str, tuple], num_classes: int, cell: int = 128) -> str:
    """One grid over several domains: domains = {"source": (images, probs, masks), "target": (...)}; rows
    are labelled "<domain> <i>"."""
    rows, labels = [], []
    for name, (images, probs, masks) in domains.items():
        r = prediction_rows(images, probs, masks, num_classes)
        rows += r
        labels += [f"{name} {i}" for i in range(len(r))]
    return save_grid(path, rows, ["image", "ground truth", "prediction", "entropy"], labels, cell)
