"""Deterministic stratified splits computed from label arrays alone (no image is read)."""

from __future__ import annotations

import math

import numpy as np


def split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """Sizes (first, second) of a split keeping `fraction` in the first part.

    The second part gets ceil(n * (1 - fraction)), as scikit-learn's train_test_split does, so
    2,223 ELPV cells at 0.5 give 1,111 / 1,112 and 1,550 poly cells at 0.7 give 1,085 / 465.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    second = math.ceil(n * (1.0 - fraction) - 1e-9)
    return n - second, second


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into two sorted index arrays, each class keeping its proportion.

    The first part holds `split_sizes(N, fraction)[0]` items; per class it gets
    floor(n_c * first / N) items plus one for the classes with the largest remainders (ties: lower
    class first), so class counts differ from the exact proportion by less than one. Which items
    go where is a seeded permutation per class (numpy PCG64), so a seed fixes the split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if n < 2:
        raise ValueError(f"need at least 2 items to split, got {n}")
    first, _ = split_sizes(n, fraction)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * first / n
    take = np.floor(exact).astype(np.int64)
    remainder = exact - take
    order = sorted(range(len(classes)), key=lambda c: (-remainder[c], c))
    for c in order[: first - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c, k in zip(classes, take, strict=True):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a.append(idx[:k])
        b.append(idx[k:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))
