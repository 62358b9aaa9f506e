"""Where a model fails: accuracy and per-class recall in image-property buckets.

Buckets are quantile bins of each property (equal counts), so every bucket has enough images to
say something; each rate carries a Wilson 95% interval, and a slice is only called a failure
when the interval's *upper* bound is below the class's overall recall: a bucket of 6 images with
2 errors is shown, but not over-read.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shiftkit.errors import ShiftkitError

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate k/n:
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Predictions:
    """What `shiftkit evaluate` writes (path,label,predicted,confidence,prob_<class>...): labels as ids."""

    paths: list[str]
    y: np.ndarray  # int class ids
    pred: np.ndarray
    classes: list[str]
    probs: np.ndarray | None = None

    @classmethod
    def read_csv(cls, path: str | Path) -> Predictions:
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise ShiftkitError(f"cannot read predictions ({exc.strerror})", path, "pass the CSV written by `shiftkit evaluate`") from None
        if not rows or not {"path", "label", "predicted"} <= set(rows[0]):
            raise ShiftkitError("predictions CSV needs columns path,label,predicted", path,
                                "write it with `shiftkit evaluate` or by hand (prob_<class> columns optional)")
        prob_cols = [c for c in rows[0] if c.startswith("prob_")]
        classes = [c[len("prob_"):] for c in prob_cols] or sorted({r["label"] for r in rows} | {r["predicted"] for r in rows})
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(({r["label"] for r in rows} | {r["predicted"] for r in rows}) - set(index))
        if unknown:
            raise ShiftkitError(f"labels {unknown[:5]} are not among the prob_ columns {classes}", path, "add their prob_ columns")
        probs = np.array([[float(r[c]) for c in prob_cols] for r in rows]) if prob_cols else None
        return cls([r["path"] for r in rows], np.array([index[r["label"]] for r in rows]),
                   np.array([index[r["predicted"]] for r in rows]), classes, probs)


@dataclass
class Slice:
    property: str
    bin: int
    low: float
    high: float
    cls: str | None  # None = all classes (accuracy)
    n: int
    correct: int
    rate: float
    ci_low: float
    ci_high: float
    overall: float
    significant: bool

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Sensitivity:
    classes: list[str]
    overall_accuracy: float
    recall: dict[str, float]
    class_counts: dict[str, int]
    imbalance_ratio: float
    confusion_pairs: list[dict]
    slices: list[Slice] = field(default_factory=list)

    def worst(self, k: int = 10, significant_only: bool = False) -> list[Slice]:
        """Slices sorted by how far their rate falls under the overall figure, biggest drop first."""
        cand = [s for s in self.slices if s.significant or not significant_only]
        return sorted(cand, key=lambda s: (s.rate - s.overall, -s.n))[:k]

    def to_dict(self) -> dict:
        return {
            "overall_accuracy": self.overall_accuracy, "recall": self.recall, "class_counts": self.class_counts,
            "imbalance_ratio": self.imbalance_ratio, "confusion_pairs": self.confusion_pairs,
            "worst_slices": [s.to_dict() for s in self.worst(20)],
            "slices": [s.to_dict() for s in self.slices],
        }


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Edges of `bins` equal-count bins (duplicates merged when a property has few distinct values)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.array([])
    return np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))


def sensitivity(preds: Predictions, table, bins: int = 5, properties: list[str] | None = None, min_count: int = 1) -> Sensitivity:
    """Accuracy and per-class recall in quantile bins of each property of `table` (a PropertyTable).

    Rows are matched by path; predictions without a property row are an error (say which).
    """
    row_of = {p: i for i, p in enumerate(table.paths)}
    missing = [p for p in preds.paths if p not in row_of]
    if missing:
        raise ShiftkitError(f"{len(missing)} predicted images have no properties (e.g. {missing[0]})", None,
                            "the predictions' paths must be relative to --data's root")
    idx = np.array([row_of[p] for p in preds.paths], dtype=np.int64)
    y, pred, C = preds.y, preds.pred, len(preds.classes)
    correct = y == pred
    counts = np.bincount(y, minlength=C)
    recall = {c: float(correct[y == k].mean()) if counts[k] else float("nan") for k, c in enumerate(preds.classes)}
    conf = np.zeros((C, C), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    pairs = [{"true": preds.classes[i], "predicted": preds.classes[j], "count": int(conf[i, j]),
              "fraction_of_true": float(conf[i, j] / max(counts[i], 1))}
             for i in range(C) for j in range(C) if i != j and conf[i, j] > 0]
    pairs.sort(key=lambda d: -d["count"])
    nonzero = counts[counts > 0]
    result = Sensitivity(preds.classes, float(correct.mean()), recall, {c: int(n) for c, n in zip(preds.classes, counts, strict=True)},
                         float(nonzero.max() / nonzero.min()) if len(nonzero) else float("nan"), pairs[:10])
    names = properties or [k for k in table.defined() if np.nanstd(table[k]) > 0]
    for name in names:
        values = table[name][idx]
        edges = quantile_edges(values, bins)
        if len(edges) < 3:
            continue
        which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        for b in range(len(edges) - 1):
            in_bin = (which == b) & np.isfinite(values)
            groups = [(None, in_bin, result.overall_accuracy)] + [
                (c, in_bin & (y == k), recall[c]) for k, c in enumerate(preds.classes) if counts[k]
            ]
            for cls, sel, overall in groups:
                n = int(sel.sum())
                if n < min_count:
                    continue
                k_ok = int(correct[sel].sum())
                lo, hi = wilson_interval(k_ok, n)
                significant = k_ok / n < overall and hi < overall - 1e-9  # the whole interval lies below
                result.slices.append(Slice(name, b, float(edges[b]), float(edges[b + 1]), cls, n, k_ok, k_ok / n,
                                           lo, hi, overall, significant))
    return result
