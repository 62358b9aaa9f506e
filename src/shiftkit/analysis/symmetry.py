"""Is a declared symmetry a symmetry of the *data*, not only of the labels?

A quarter turn keeps a solar cell's label, but ELPV cells are all imaged with their busbars the
same way round: a turned cell is a valid image of a defect, yet one no camera in the data set
produces, so a plan that turns only the minority class's new images teaches the model "turned
means defective". The check here is cheap and uses the training images only: per image, the
log ratio of horizontal to vertical gradient energy, a = log(E|d/dx| / E|d/dy|) (`properties.orientation`,
a column of the property table, so it costs no extra pass over the images). A quarter turn
maps a to -a; when the distribution of a and that of -a differ, rot90 moves images off the data's
distribution and is dropped from the plan, with the figures in its reasoning. "Differ" means
both large (two-sample KS statistic at or above the 0.2 the drift report uses) and not chance: a
small set of isotropic images often shows KS(a, -a) above 0.2 (about one set in ten at 60 images),
so the KS must also beat a sign-flip test (if a is symmetric about 0, flipping the signs of random
entries leaves its distribution unchanged; p < 0.01 over 199 flips). Flips keep a, so this test
cannot judge them; they are kept as declared.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

KS_THRESHOLD = 0.2
ALPHA = 0.01


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (0 for identical samples)."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def sign_flip_p_value(a: np.ndarray, ks: float, flips: int = 199, seed: int = 0) -> float:
    """P(KS(b, -b) >= ks) when a is symmetric about 0, estimated with b = a with random signs:
    (1 + flips reaching ks) / (1 + flips). Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    a = np.asarray(a, float)
    hits = 0
    for _ in range(flips):
        b = a * rng.choice((-1.0, 1.0), a.size)
        hits += ks_statistic(b, -b) >= ks - 1e-12
    return (hits + 1) / (flips + 1)


def check_symmetries(symmetries: Iterable[str], log_ratios: np.ndarray | None,
                     ks_threshold: float = KS_THRESHOLD, alpha: float = ALPHA) -> tuple[tuple[str, ...], list[str]]:
    """(kept symmetries, reasoning lines). rot90 is dropped when KS(a, -a) >= ks_threshold and the
    sign-flip p-value is below alpha, where a are the training images' orientation log ratios;
    without ratios every symmetry is kept."""
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
    if ks < ks_threshold:
        return syms, [f"{what} < {ks_threshold}: the data has no preferred orientation, rot90 kept"]
    p = sign_flip_p_value(a, ks)
    if p >= alpha:
        return syms, [(f"{what} >= {ks_threshold} but sign-flip p = {p:.3f} >= {alpha}: as likely from isotropic "
                       f"images of this number, so rot90 kept")]
    why = (f"{what} >= {ks_threshold}, sign-flip p = {p:.3f} < {alpha}: turned images lie off the data's "
           f"distribution (a turn would become a class cue when only some classes get it), so rot90 is dropped "
           f"from the plan")
    return tuple(s for s in syms if s != "rot90"), [why]
