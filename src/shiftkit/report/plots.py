"""Small charts (matplotlib, Agg backend: no display needed), written atomically as PNG.

One figure per call, small (about 4 x 3 inches at 100 dpi) so a run folder of many stays light.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from shiftkit.io import atomic_write_bytes

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int) -> None:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def overlaid_histograms(
    samples: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    xlabel: str = "",
    bins: int = 32,
    size: tuple[float, float] = (4.0, 3.0),
    dpi: int = 100,
) -> None:
    """Density histograms of several samples on shared bins, overlaid (one colour each)."""
    if len(samples) != len(labels):
        raise ValueError(f"{len(samples)} samples but {len(labels)} labels")
    if not 1 <= len(samples) <= len(COLOURS):
        raise ValueError(f"1 to {len(COLOURS)} samples, got {len(samples)}")
    clean = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    clean = [s[np.isfinite(s)] for s in clean]
    pooled = np.concatenate(clean) if clean else np.zeros(0)
    if pooled.size == 0:
        raise ValueError("no finite values to plot")
    lo, hi = float(pooled.min()), float(pooled.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    for s, label, colour in zip(clean, labels, COLOURS, strict=False):
        if s.size:
            ax.hist(s, bins=edges, density=True, alpha=0.45, color=colour, label=f"{label} (n={s.size})")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    _save(fig, path, dpi)


def bar_chart(
    values: Sequence[float],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    ylabel: str = "",
    reference: float | None = None,
    ylim: tuple[float, float] | None = None,
    size: tuple[float, float] = (4.0, 3.0),
    dpi: int = 100,
) -> None:
    """Vertical bars with their values printed on top; an optional dashed reference line."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} labels")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    x = np.arange(len(values))
    ax.bar(x, values, color=COLOURS[0])
    for xi, v in zip(x, values, strict=True):
        ax.text(xi, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(x, list(labels), fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    _save(fig, path, dpi)
