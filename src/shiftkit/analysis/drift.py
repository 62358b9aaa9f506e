"""How far apart are two datasets, per property and as a whole?

- per property: the two-sample Kolmogorov-Smirnov statistic (with its p-value) and the overlap
  coefficient of the two histograms on shared bins;
- as a whole, the *gap score*: the cross-validated accuracy of a simple domain classifier
  (logistic regression) that tries to tell A's images from B's. 0.5 means indistinguishable,
  1.0 means every image gives its domain away. It is computed on (i) the property vector and
  (ii) pretrained-free pixel features (`properties.simple_features`), and on any pretrained
  backbone's features through `feature_gap`, which also reports the kernel MMD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shiftkit.errors import ShiftkitError


# --------------------------------------------------------------------------- per property
def _clean(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


def ks_statistic(a: Any, b: Any) -> float:
    """Two-sample KS statistic ``D = sup_x |F_a(x) - F_b(x)|`` of the empirical CDFs (NaNs dropped).

    Evaluated at every observed value with `searchsorted(side="right")`, which handles ties.
    """
    a, b = np.sort(_clean(a, "a")), np.sort(_clean(b, "b"))
    if len(a) == 0 or len(b) == 0:
        raise ShiftkitError("KS needs at least one finite value on each side")
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def ks_2samp(a: Any, b: Any) -> tuple[float, float]:
    """(D, p-value): `ks_statistic` and the asymptotic two-sided p-value.

    ``p = P(D_n >= D)`` for the one-sample KS distribution with ``n = round(m n / (m + n))``
    (at least 1) (`scipy.stats.kstwo`), as scipy's ``ks_2samp(method="asymp")``.
    """
    from scipy.stats import kstwo

    d = ks_statistic(a, b)
    m, n = len(_clean(a, "a")), len(_clean(b, "b"))
    en = m * n / (m + n)
    p = float(np.clip(kstwo.sf(d, max(1.0, np.round(en))), 0.0, 1.0))
    return d, p


def histogram_overlap(a: Any, b: Any, bins: int = 32) -> float:
    """Overlap coefficient ``OVL = sum_k min(p_k, q_k)`` of the two histograms on shared bins.

    Bins: `bins` equal-width bins over the pooled range of finite values. 1 = same histogram,
    0 = disjoint supports; two constant samples with the same value overlap fully.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    a, b = _clean(a, "a"), _clean(b, "b")
    if len(a) == 0 or len(b) == 0:
        raise ShiftkitError("overlap needs at least one finite value on each side")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if hi <= lo:
        return 1.0
    edges = np.linspace(lo, hi, bins + 1)
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(p, q).sum())


def property_drift(table_a, table_b, names: Sequence[str] | None = None, bins: int = 32) -> list[dict[str, Any]]:
    """One row per property defined on both sides, most drifted (largest KS) first."""
    if names is None:
        names = [k for k in table_a.defined() if k in table_b.defined()]
    rows = []
    for k in names:
        a, b = _clean(table_a[k], k), _clean(table_b[k], k)
        if len(a) == 0 or len(b) == 0:
            continue
        d, p = ks_2samp(a, b)
        rows.append({
            "property": k, "ks": d, "p_value": p, "overlap": histogram_overlap(a, b, bins),
            "median_a": float(np.median(a)), "median_b": float(np.median(b)),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "n_a": len(a), "n_b": len(b),
        })
    rows.sort(key=lambda r: (-r["ks"], r["overlap"]))
    return rows


# --------------------------------------------------------------------------- MMD
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if t.ndim != 2:
        raise ShiftkitError(f"{name} must be an (N, D) feature matrix, got shape {tuple(t.shape)}")
    return t


def mmd_rbf(x: Any, y: Any, bandwidth: float | None = None, max_n: int = 2000, seed: int = 0,
            n_permutations: int = 0, threads: int | None = 1) -> dict[str, float]:
    """Unbiased squared MMD with an RBF kernel ``k(u, v) = exp(-|u - v|^2 / (2 s^2))``.

    ``MMD^2 = mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j)``.
    `bandwidth` s defaults to the median heuristic: the median pairwise distance of the pooled
    sample. Each side is subsampled (seeded) to at most `max_n` rows (the kernel is O(n^2)).
    With `n_permutations` > 0 the p-value of a permutation test is added. Torch runs with
    `threads` intra-op threads (default 1, restored after; see `compute_properties`).
    Returns {"mmd2", "bandwidth", "p_value" (NaN without permutations), "n_x", "n_y"}.
    """
    from shiftkit.analysis.properties import _cpu_threads

    with _cpu_threads(threads):
        return _mmd_rbf(x, y, bandwidth, max_n, seed, n_permutations)


def _mmd_rbf(x: Any, y: Any, bandwidth: float | None, max_n: int, seed: int, n_permutations: int) -> dict[str, float]:
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ShiftkitError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ShiftkitError(f"MMD needs at least 2 rows per side, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    if len(x) > max_n:
        x = x[torch.randperm(len(x), generator=g)[:max_n]]
    if len(y) > max_n:
        y = y[torch.randperm(len(y), generator=g)[:max_n]]
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    n, m = len(x), len(y)
    if bandwidth is None:
        iu = torch.triu_indices(len(z), len(z), 1)
        med = float(np.median(d2[iu[0], iu[1]].clamp_min(0).sqrt().numpy()))  # interpolated median
        bandwidth = med if med > 0 else 1.0
    if bandwidth <= 0:
        raise ShiftkitError(f"bandwidth must be > 0, got {bandwidth}")
    k = torch.exp(-d2 / (2.0 * bandwidth**2))

    def stat(ix: torch.Tensor, iy: torch.Tensor) -> float:
        kxx, kyy, kxy = k[ix][:, ix], k[iy][:, iy], k[ix][:, iy]
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return float(sxx + syy - 2 * kxy.mean())

    idx = torch.arange(n + m)
    mmd2 = stat(idx[:n], idx[n:])
    p = float("nan")
    if n_permutations > 0:
        count = 0
        for _ in range(n_permutations):
            perm = torch.randperm(n + m, generator=g)
            count += stat(perm[:n], perm[n:]) >= mmd2
        p = (count + 1) / (n_permutations + 1)
    return {"mmd2": mmd2, "bandwidth": float(bandwidth), "p_value": p, "n_x": n, "n_y": m}


# --------------------------------------------------------------------------- domain classifier
def domain_classifier_accuracy(x_a: Any, x_b: Any, folds: int = 5, seed: int = 0,
                               max_per_domain: int | None = 5000, C: float = 1.0, threads: int | None = 1) -> dict[str, Any]:
    """Cross-validated accuracy of logistic regression telling A's rows from B's.

    Classes are balanced by subsampling the larger side (seeded), so chance is exactly 0.5;
    features are standardised inside each fold; stratified k-fold with a fixed seed. BLAS runs
    with `threads` threads (default 1: these fits are small, and on a busy machine more threads
    were about 3x slower; None leaves the BLAS setting alone).
    Returns {"accuracy", "accuracy_std", "fold_accuracies", "n_per_domain", "folds", "dim"}.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = np.asarray(x_a, dtype=np.float64), np.asarray(x_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShiftkitError(f"expected two (N, D) matrices with the same D, got {a.shape} and {b.shape}")
    if a.shape[1] == 0:
        raise ShiftkitError("no features to classify on")
    if folds < 2:
        raise ShiftkitError(f"folds must be >= 2, got {folds}")
    # a column that is NaN anywhere (e.g. object_area in a classification set) carries no signal
    ok = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    a, b = a[:, ok], b[:, ok]
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    if max_per_domain is not None:
        n = min(n, max_per_domain)
    if n < folds:
        raise ShiftkitError(f"need at least {folds} images per domain for {folds}-fold cross-validation, got {n}")
    a = a[rng.choice(len(a), n, replace=False)] if len(a) > n else a
    b = b[rng.choice(len(b), n, replace=False)] if len(b) > n else b
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    if a.shape[1] == 0:
        accs = [0.5] * folds
    else:
        from contextlib import nullcontext

        from threadpoolctl import threadpool_limits

        accs = []
        with threadpool_limits(limits=threads) if threads else nullcontext():
            for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
                clf.fit(x[tr], y[tr])
                accs.append(float((clf.predict(x[te]) == y[te]).mean()))
    return {
        "accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs, "n_per_domain": int(n), "folds": folds, "dim": int(x.shape[1]),
    }


def feature_gap(features_a: Any, features_b: Any, folds: int = 5, seed: int = 0,
                max_per_domain: int | None = 5000, mmd_max_n: int = 1000, standardize: bool = True) -> dict[str, Any]:
    """Gap on any feature matrices (e.g. a pretrained backbone's pooled features).

    Domain classifier accuracy (see `domain_classifier_accuracy`) plus RBF MMD^2 (median
    heuristic) on features standardised with the pooled mean/std when `standardize`.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    out = domain_classifier_accuracy(a, b, folds=folds, seed=seed, max_per_domain=max_per_domain)
    if standardize:
        z = np.concatenate([a, b])
        mu, sd = z.mean(0), z.std(0)
        sd[sd == 0] = 1.0
        a, b = (a - mu) / sd, (b - mu) / sd
    mmd = mmd_rbf(a, b, max_n=mmd_max_n, seed=seed)
    out["mmd2"] = mmd["mmd2"]
    out["mmd_bandwidth"] = mmd["bandwidth"]
    return out


def _table(x: Any, name: str, **kw):
    import os

    from shiftkit.analysis.properties import PropertyTable, compute_properties
    from shiftkit.data import open_dataset

    if isinstance(x, (str, os.PathLike)):
        x = open_dataset(x)
    if isinstance(x, PropertyTable):
        if x.features is None:
            raise ShiftkitError(f"the {name} property table has no features", None, "compute it with features=True")
        return x
    return compute_properties(x, features=True, desc=f"properties ({name})", **kw)


def gap_score(a: Any, b: Any, feature_sets: Sequence[str] = ("properties", "pixels"), folds: int = 5,
              seed: int = 0, max_per_domain: int | None = 5000, **compute_kw) -> dict[str, dict[str, Any]]:
    """How well a simple domain classifier tells A from B: {feature set: result}; 0.5 = indistinguishable.

    `a`, `b`: dataset folders, shiftkit datasets, lists of `Sample`, or `PropertyTable`s computed with
    ``features=True``. Feature sets: "properties" (the property vector: pixel statistics, size,
    object area), "pixels" (pretrained-free features: colour histograms, 16x16 luminance
    thumbnail, gradient orientation histograms). `compute_kw` goes to `compute_properties`
    (batch_size, cache, progress, workers, work_size, device). Each result is
    `domain_classifier_accuracy`'s dict; "pixels" adds the RBF MMD^2 as `feature_gap` does.
    """
    unknown = set(feature_sets) - {"properties", "pixels"}
    if unknown:
        raise ShiftkitError(f"unknown feature set(s) {sorted(unknown)}", None, "use properties and/or pixels")
    ta, tb = _table(a, "A", **compute_kw), _table(b, "B", **compute_kw)
    out: dict[str, dict[str, Any]] = {}
    if "properties" in feature_sets:
        names = [k for k in ta.defined() if k in tb.defined()]
        out["properties"] = domain_classifier_accuracy(ta.matrix(names), tb.matrix(names), folds, seed, max_per_domain)
        out["properties"]["names"] = names
    if "pixels" in feature_sets:
        out["pixels"] = feature_gap(ta.features, tb.features, folds, seed, max_per_domain)
    return out
