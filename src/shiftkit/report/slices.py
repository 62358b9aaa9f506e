"""Small charts of a rate per property bucket with its confidence interval (one chart per property)."""

from __future__ import annotations

import os

import numpy as np

from shiftkit.report.plots import _pyplot, _save


def slice_chart(slices, prop: str, path: str | os.PathLike, dpi: int = 100) -> None:
    """Accuracy (all classes) and recall per class across the buckets of `prop`, 95% intervals as bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    groups: dict = {}
    for s in slices:
        if s.property == prop:
            groups.setdefault(s.cls, []).append(s)
    for cls, ss in sorted(groups.items(), key=lambda kv: (kv[0] is not None, str(kv[0]))):
        ss = sorted(ss, key=lambda s: s.bin)
        x = np.array([(s.low + s.high) / 2 for s in ss])
        r = np.array([s.rate for s in ss])
        err = np.clip(np.array([[s.rate - s.ci_low for s in ss], [s.ci_high - s.rate for s in ss]]), 0, None)
        ax.errorbar(x, r, yerr=err, marker="o", capsize=3, linewidth=1.2, markersize=4,
                    label="accuracy (all)" if cls is None else f"recall {cls}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{prop} (bucket centre)", fontsize=9)
    ax.set_ylabel("rate (95% CI)", fontsize=9)
    ax.set_title(f"performance by {prop}", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, frameon=False)
    _save(fig, path, dpi)
