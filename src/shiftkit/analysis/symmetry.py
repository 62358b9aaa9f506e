"""Is a declared symmetry a symmetry of the *data*, not only of the labels?

A quarter turn keeps a solar cell's label, but ELPV cells are all imaged with their busbars the
same way round: a turned cell is a valid image of a defect, yet one no camera in the data set
produces, so a plan that turns only the minority class's new images teaches the model "turned
means defective". The check here is cheap and uses the training images only: per image, the
log ratio of horizontal to vertical gradient energy, a = log(E|d/dx| / E|d/dy|). A quarter turn
maps a to -a; when the distribution of a and that of -a differ (two-sample KS statistic at or
above a threshold, the same 0.2 the drift report uses), rot90 moves images off the data's
distribution and is dropped from the plan, with the figures in its reasoning. Flips keep a, so
this test cannot judge them; they are kept as declared.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

KS_THRESHOLD = 0.2
WORK_SIZE = 128


def orientation_log_ratio(image: np.ndarray, work_size: int = WORK_SIZE) -> float:
    """log((mean |horizontal gradient| + eps) / (mean |vertical gradient| + eps)) of one uint8 image
    (H x W or H x W x C), on its luminance resized (area) so that the longer side is <= work_size."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a.mean(2) if a.shape[2] > 1 else a[:, :, 0]
    y = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / 255.0)[None, None]
    h, w = y.shape[-2:]
    scale = min(1.0, work_size / max(h, w))
    if scale < 1.0:
        y = F.interpolate(y, size=(max(2, round(h * scale)), max(2, round(w * scale))), mode="area")
    gx = (y[..., :, 1:] - y[..., :, :-1]).abs().mean()
    gy = (y[..., 1:, :] - y[..., :-1, :]).abs().mean()
    eps = 1e-6
    return float(torch.log((gx + eps) / (gy + eps)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (0 for identical samples)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def check_symmetries(symmetries: Iterable[str], log_ratios: np.ndarray | None,
                     ks_threshold: float = KS_THRESHOLD) -> tuple[tuple[str, ...], list[str]]:
    """(kept symmetries, reasoning lines). rot90 is dropped when KS(a, -a) >= ks_threshold, where a
    are the training images' orientation log ratios; without ratios every symmetry is kept."""
    syms = tuple(symmetries)
    if log_ratios is None or "rot90" not in syms:
        return syms, []
    a = np.asarray(log_ratios, float)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return syms, []
    ks = ks_statistic(a, -a)
    med = float(np.median(a))
    what = (f"rot90: orientation log ratio log(E|d/dx| / E|d/dy|) of the {a.size} training images has median "
            f"{med:+.3f}; a quarter turn negates it, KS(a, -a) = {ks:.2f}")
    if ks >= ks_threshold:
        why = (f"{what} >= {ks_threshold}: turned images lie off the data's distribution (a turn would become a "
               f"class cue when only some classes get it), so rot90 is dropped from the plan")
        return tuple(s for s in syms if s != "rot90"), [why]
    return syms, [f"{what} < {ks_threshold}: the data has no preferred orientation, rot90 kept"]
