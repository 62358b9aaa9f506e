"""Plans and the prepare loop shared by every benchmark builder.

A builder turns a seed into a `BenchmarkPlan`: named splits, each a list of `Item`s (relative
path, class id, and a callable that makes the `Sample` only when it is written). Counts, class
balance and READMEs come from the plan, so they are known (and testable) before any image is
decoded; `prepare` then streams each split through the data layer's writer, which makes it
atomic and resumable.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shiftkit import __version__
from shiftkit.data.sample import Sample
from shiftkit.errors import DatasetError
from shiftkit.io import atomic_write_json, atomic_write_text

SUMMARY_FILE = "benchmark.json"
README = "README"
FORMATS = ("imagefolder", "folder", "segmentation")


@dataclass
class Item:
    path: str  # relative path inside the split's dataset (the writer's key for resume)
    label: int | None  # class id for counting; kept out of the files of unlabeled splits
    make: Callable[[], Sample]  # decodes / renders the sample only when it is written


@dataclass
class SplitPlan:
    name: str  # folder under OUT, e.g. "source", "target", "target-test"
    format: str  # one of FORMATS
    classes: list[str]
    items: list[Item]
    origin: str  # where the pixels come from (package + version)
    licence: str
    rule: str  # selection and split rule in words, seed included
    labelled: bool = True
    notes: list[str] = field(default_factory=list)
    balance_unit: str = "images"  # what class counts count ("images", or "digits" for scenes)
    balance: dict[str, int] | None = None  # overrides the per-item label count (scenes)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {FORMATS}")

    def class_counts(self) -> dict[str, int]:
        if self.balance is not None:
            return dict(self.balance)
        counts = Counter(it.label for it in self.items if it.label is not None)
        return {name: int(counts.get(i, 0)) for i, name in enumerate(self.classes)}

    def summary(self) -> dict:
        return {
            "format": self.format,
            "labelled": self.labelled,
            "count": len(self.items),
            "classes": self.class_counts(),
            "balance_unit": self.balance_unit,
        }

    def readme(self, benchmark: str, seed: int, limit: int | None) -> str:
        counts = self.class_counts()
        balance = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines = [
            f"shiftkit benchmark data: {benchmark} / {self.name}",
            "",
            f"Made by: shiftkit {__version__}, `shiftkit data prepare {benchmark} --seed {seed}`"
            + (f" (subset: at most {limit} per split)" if limit else ""),
            f"Source: {self.origin}",
            f"Licence: {self.licence}",
            f"Selection and split: {self.rule}",
            f"Format: {self.format}"
            + (f" (classes: {', '.join(self.classes)})" if self.labelled else " (no labels: unlabeled target)"),
            f"Count: {len(self.items)} images",
            f"Class balance ({self.balance_unit}): {balance}" + ("" if self.labelled else " (labels withheld from these files)"),
        ]
        lines += self.notes
        return "\n".join(lines) + "\n"


@dataclass
class BenchmarkPlan:
    name: str
    seed: int
    description: str
    splits: list[SplitPlan]
    limit: int | None = None

    def split(self, name: str) -> SplitPlan:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(name)

    def summary(self, out: Path | None = None, status: str = "planned") -> dict:
        return {
            "benchmark": self.name,
            "seed": self.seed,
            "limit": self.limit,
            "status": status,
            "out": None if out is None else str(out),
            "splits": {s.name: s.summary() for s in self.splits},
        }


def subset(items: list, limit: int | None) -> list:
    """At most `limit` items, evenly spaced over the items sorted by class, so classes keep roughly
    their proportions (small test builds); the original order is kept."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    by_class = sorted(range(len(items)), key=lambda i: (items[i].label if items[i].label is not None else -1, i))
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[i] for i in sorted(by_class[p] for p in picks)]


# ---------------------------------------------------------------- preparing OUT


def _owned(plan: BenchmarkPlan) -> set[str]:
    names = {SUMMARY_FILE, README}
    for s in plan.splits:
        names |= {s.name, s.name + ".partial"}
    return names


def _check_out(out: Path, plan: BenchmarkPlan, overwrite: bool) -> dict | None:
    """Return the finished summary if OUT already holds this build; refuse foreign or mismatched content."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DatasetError("--out exists and is not a folder", out, "choose a new folder")
    owned = _owned(plan)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in owned and not p.name.startswith("."))
    if foreign:
        raise DatasetError(
            f"--out holds files this build does not own ({', '.join(foreign[:3])})", out, "choose an empty or new folder"
        )
    meta_path = out / SUMMARY_FILE
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
    if overwrite:
        for name in owned:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        return None
    if meta is None:
        if any((out / s.name).exists() or (out / (s.name + ".partial")).exists() for s in plan.splits):
            raise DatasetError(f"{SUMMARY_FILE} missing, cannot tell what this folder holds", out, "rerun with --overwrite")
        return None
    key = (meta.get("benchmark"), meta.get("seed"), meta.get("limit"))
    if key != (plan.name, plan.seed, plan.limit):
        raise DatasetError(
            f"folder holds {key[0]} seed {key[1]} limit {key[2]}, not {plan.name} seed {plan.seed} limit {plan.limit}",
            out,
            "rerun with --overwrite, or choose another --out",
        )
    if meta.get("status") == "complete" and all((out / s.name).is_dir() for s in plan.splits):
        return meta
    return None


def prepare(
    plan: BenchmarkPlan,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Write every split of `plan` under OUT; resume after a kill; return the summary.

    A complete OUT (``benchmark.json`` says so) is left untouched and its summary returned with
    status "exists". Each split is written by the data layer's writer (OUT/split.partial, renamed
    when finished), so a rerun skips finished files and finished splits.
    """
    from shiftkit.data.builders.write import write_split

    out = Path(out)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    done = _check_out(out, plan, overwrite)
    if done is not None:
        done = dict(done, status="exists", out=str(out))
        log(f"{out} already holds {plan.name} (seed {plan.seed}); nothing to do (use --overwrite to rebuild)")
        return done
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SUMMARY_FILE, plan.summary(out, "in-progress"))
    pixels: dict[str, dict[str, float]] = {}
    for split in plan.splits:
        target = out / split.name
        provenance = {
            "command": f"shiftkit data prepare {plan.name} --seed {plan.seed}",
            "benchmark": plan.name,
            "split": split.name,
            "seed": plan.seed,
            "limit": plan.limit,
            "source": split.origin,
            "licence": split.licence,
            "rule": split.rule,
        }
        if target.is_dir() and not (out / (split.name + ".partial")).exists():
            log(f"{split.name}: already written, skipped")
        else:
            log(f"{split.name}: writing {len(split.items)} images ({split.format}) ...")
            write_split(target, split, provenance, progress=progress)
        extra = []
        if split.format == "segmentation":
            pixels[split.name] = mask_pixel_fractions(target, split.classes)
            extra = ["Pixel balance (masks): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in pixels[split.name].items())]
        readme = target / README
        text = split.readme(plan.name, plan.seed, plan.limit) + "".join(line + "\n" for line in extra)
        if not readme.is_file() or readme.read_text() != text:
            atomic_write_text(readme, text)
    atomic_write_text(out / README, _top_readme(plan))
    summary = plan.summary(out, "complete")
    for name, fractions in pixels.items():
        summary["splits"][name]["pixels"] = fractions
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def mask_pixel_fractions(root: Path, classes: list[str]) -> dict[str, float]:
    """Fraction of mask pixels per class id over ROOT/masks/*.png (read back, so resumed builds count too)."""
    from shiftkit.data.images import read_mask

    counts = np.zeros(256, dtype=np.int64)
    for f in sorted((root / "masks").rglob("*.png")):
        counts += np.bincount(read_mask(f).ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    out = {name: float(counts[i] / total) for i, name in enumerate(classes)}
    rest = int(counts[len(classes):].sum())
    if rest:
        out["other"] = rest / total  # ids outside the class list (255 = ignore)
    return out


def _top_readme(plan: BenchmarkPlan) -> str:
    lines = [f"shiftkit benchmark data: {plan.name} (seed {plan.seed})", "", plan.description, "", "Folders:"]
    for s in plan.splits:
        lines.append(f"  {s.name}/  {len(s.items)} images, {s.format}; see {s.name}/README")
    lines += ["", "Licences differ per folder; read each README before sharing any of this data."]
    return "\n".join(lines) + "\n"
