"""B1 `elpv-defect` and B2 `elpv-mono2poly` from the `elpv-dataset` package (never copied into the repo)."""

from __future__ import annotations

import numpy as np

from shiftkit.data.builders.core import BenchmarkPlan, Item, SplitPlan, subset
from shiftkit.data.builders.sources import ELPV_LICENCE, ElpvTable, load_elpv, package_version
from shiftkit.data.builders.splits import stratified_split
from shiftkit.data.sample import Sample

CLASSES = ["functional", "defective"]


def _origin() -> str:
    return f"ELPV solar-cell electroluminescence images (300x300 grayscale), PyPI package elpv-dataset {package_version('elpv-dataset')}"


def _items(table: ElpvTable, idx: np.ndarray, labels: np.ndarray, labelled: bool) -> list[Item]:
    """One item per cell, keeping the original name (cellNNNN.png) for provenance."""
    names = table.names()
    items = []
    for i in idx:
        i = int(i)
        y = int(labels[i])
        rel = f"{CLASSES[y]}/{names[i]}" if labelled else names[i]
        items.append(Item(rel, y, lambda i=i, y=y, rel=rel: Sample(table.read(i), y, rel)))
    return items


def defect_labels(table: ElpvTable) -> tuple[np.ndarray, np.ndarray]:
    """B1 selection: cells rated exactly 0 (functional) or 1 (defective). Returns (indices, labels 0/1 per cell)."""
    sure = np.flatnonzero((table.probability == 0.0) | (table.probability == 1.0))
    labels = (table.probability >= 0.5).astype(np.int64)
    return sure, labels


def plan_elpv_defect(seed: int = 0, limit: int | None = None, table: ElpvTable | None = None) -> BenchmarkPlan:
    table = table or load_elpv()
    sure, labels = defect_labels(table)
    a, b = stratified_split(labels[sure], 0.5, seed)
    rule = (
        f"cells with defect probability exactly 0 (functional) or 1 (defective), {len(sure)} of {len(table)}; "
        f"stratified 50/50 split with seed {seed}"
    )
    splits = [
        SplitPlan(name, "imagefolder", CLASSES, subset(_items(table, sure[part], labels, True), limit), _origin(), ELPV_LICENCE,
                  f"{rule}; this folder is the {which} half")
        for name, part, which in (("train", a, "first (train)"), ("val", b, "second (validation)"))
    ]
    return BenchmarkPlan(
        "elpv-defect", seed,
        "B1: defect classification of ELPV solar cells (functional vs defective), the source article's setting.",
        splits, limit,
    )


def plan_elpv_mono2poly(seed: int = 0, limit: int | None = None, table: ElpvTable | None = None) -> BenchmarkPlan:
    table = table or load_elpv()
    labels = (table.probability >= 0.5).astype(np.int64)
    mono = np.flatnonzero(table.type == "mono")
    poly = np.flatnonzero(table.type == "poly")
    a, b = stratified_split(labels[poly], 0.7, seed)
    label_rule = "label defective = defect probability >= 0.5, else functional"
    poly_rule = f"polycrystalline cells ({len(poly)}), {label_rule}; stratified 70/30 split with seed {seed}"
    splits = [
        SplitPlan("source", "imagefolder", CLASSES, subset(_items(table, mono, labels, True), limit), _origin(), ELPV_LICENCE,
                  f"all monocrystalline cells ({len(mono)}), {label_rule}"),
        SplitPlan("target", "folder", CLASSES, subset(_items(table, poly[a], labels, False), limit), _origin(), ELPV_LICENCE,
                  f"{poly_rule}; this folder is the 70% part (unlabeled target-train)", labelled=False),
        SplitPlan("target-test", "imagefolder", CLASSES, subset(_items(table, poly[b], labels, True), limit), _origin(),
                  ELPV_LICENCE, f"{poly_rule}; this folder is the 30% part (labels for scoring only)"),
    ]
    return BenchmarkPlan(
        "elpv-mono2poly", seed,
        "B2: unsupervised domain adaptation from monocrystalline (labeled) to polycrystalline (unlabeled) ELPV cells.",
        splits, limit,
    )
