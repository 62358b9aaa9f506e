"""`shiftkit drift`: which image properties differ between two datasets, and how separable they are."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from shiftkit.common_args import add_device, add_json, add_no_progress, add_seed, add_task, add_workers, epilog

HELP = "measure the shift between two datasets: per-property drift (KS, overlap) and the gap score"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog(
        "shiftkit drift --source data/elpv-mono2poly/source --target data/elpv-mono2poly/target-train",
        "shiftkit drift --source A --target B --out runs/drift-ab --backbone mobilenet_v2 --json",
    )
    parser.add_argument("--source", required=True, help="dataset folder A")
    parser.add_argument("--target", required=True, help="dataset folder B")
    parser.add_argument("--out", default=None, help="run folder (default runs/drift-YYYYmmdd-HHMMSS)")
    parser.add_argument("--backbone", default="none", choices=("none", "mobilenet_v2"),
                        help="also measure the gap on frozen ImageNet features (default none)")
    parser.add_argument("--work-size", type=int, default=128,
                        help="pixel properties are computed with the short side resized to this (default 128)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the gap score (default 5)")
    parser.add_argument("--max-per-domain", type=int, default=5000,
                        help="images per domain for the domain classifier (subsampled, seeded; default 5000)")
    parser.add_argument("--plots", type=int, default=6, help="histograms of the N most drifted properties (default 6)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every property (ignore the cache)")
    add_no_progress(parser)
    add_task(parser)
    add_seed(parser)
    add_device(parser)
    add_workers(parser, default=2)
    add_json(parser)


def _versions() -> dict:
    try:
        from shiftkit.train.runfolder import versions

        return versions()
    except ImportError:
        import numpy
        import torch

        import shiftkit

        return {"shiftkit": shiftkit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}


def run(args: argparse.Namespace) -> int:
    from shiftkit.analysis.drift import gap_score, property_drift
    from shiftkit.analysis.properties import compute_properties
    from shiftkit.data import open_dataset
    from shiftkit.device import resolve_device
    from shiftkit.errors import ShiftkitError
    from shiftkit.io import atomic_write_json

    for name in ("work_size", "batch_size", "folds", "max_per_domain"):
        if getattr(args, name) < (2 if name == "folds" else 1):
            raise ShiftkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.workers < 0 or args.plots < 0:
        raise ShiftkitError("--workers and --plots must be >= 0")
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("drift-%Y%m%d-%H%M%S")
    progress = not args.no_progress
    t0 = time.time()

    ds_a = open_dataset(args.source, task=args.task)
    ds_b = open_dataset(args.target, task=args.task)
    kw = dict(batch_size=args.batch_size, cache=not args.no_cache, progress=progress, workers=args.workers,
              work_size=args.work_size, device=device, features=True)
    ta = compute_properties(ds_a, desc="properties (source)", **kw)
    tb = compute_properties(ds_b, desc="properties (target)", **kw)
    if len(ta) == 0 or len(tb) == 0:
        raise ShiftkitError("a dataset has no images", args.source if len(ta) == 0 else args.target)
    t_props = time.time() - t0

    rows = property_drift(ta, tb)
    notes: list[str] = []
    folds = min(args.folds, len(ta), len(tb), args.max_per_domain)
    gap: dict = {}
    if folds < 2:
        notes.append("gap score skipped: the domain classifier needs at least 2 images per dataset")
    else:
        if folds < args.folds:
            notes.append(f"gap score with {folds}-fold cross-validation (too few images for {args.folds})")
        gap = gap_score(ta, tb, folds=folds, seed=args.seed, max_per_domain=args.max_per_domain)
    if args.backbone != "none" and folds >= 2:
        from shiftkit.analysis.features import backbone_gap

        try:
            gap[args.backbone] = backbone_gap(ds_a, ds_b, args.backbone, folds=folds, seed=args.seed,
                                              max_per_domain=args.max_per_domain, device=str(device),
                                              progress=progress, cache=not args.no_cache)
        except ShiftkitError as exc:
            notes.append(f"--backbone {args.backbone} skipped: {exc}")

    figures = out / "figures"
    plotted = []
    if args.plots:
        from shiftkit.report.plots import overlaid_histograms

        for r in [r for r in rows if r["ks"] > 0][: args.plots]:
            k = r["property"]
            path = figures / f"hist_{k}.png"
            overlaid_histograms([ta[k], tb[k]], ["source", "target"], path,
                                title=f"{k}: KS {r['ks']:.2f}, overlap {r['overlap']:.2f}", xlabel=k)
            plotted.append(str(path.relative_to(out)))
    if args.plots and gap:
        from shiftkit.report.plots import bar_chart

        bar_chart([g["accuracy"] for g in gap.values()], list(gap), figures / "gap_score.png",
                  title="gap score (0.5 = indistinguishable)", ylabel="domain classifier accuracy",
                  reference=0.5, ylim=(0.0, 1.05))
        plotted.append("figures/gap_score.png")
    ta.to_csv(out / "properties_source.csv")
    tb.to_csv(out / "properties_target.csv")

    wall = time.time() - t0
    metrics = {
        "n_source": len(ta), "n_target": len(tb),
        "properties": rows,
        "gap": gap,
        "images_per_s": (len(ta) + len(tb)) / max(t_props, 1e-9),
        "cached": {"source": ta.meta.get("cached", 0), "target": tb.meta.get("cached", 0)},
        "wall_s": wall,
        "figures": plotted,
        "notes": notes,
    }
    config = {
        "command": "drift", "source": str(args.source), "target": str(args.target), "out": str(out),
        "task": args.task, "backbone": args.backbone, "work_size": args.work_size, "batch_size": args.batch_size,
        "folds": folds, "max_per_domain": args.max_per_domain, "plots": args.plots,
        "cache": not args.no_cache, "workers": args.workers, "seed": args.seed, "device": str(device),
        "versions": _versions(), "argv": sys.argv,
    }
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "metrics.json", metrics)

    if args.json:
        print(json.dumps({**metrics, "out": str(out)}, indent=2, default=float))
        return 0
    print(format_report(metrics, out))
    return 0


def format_report(metrics: dict, out: Path) -> str:
    """Compact human table: most drifted properties first, then the gap score(s)."""
    lines = [f"source {metrics['n_source']} images, target {metrics['n_target']} images"]
    lines.append(f"{'property':<14} {'KS':>6} {'p':>9} {'overlap':>8} {'source med':>11} {'target med':>11}")
    for r in metrics["properties"]:
        lines.append(f"{r['property']:<14} {r['ks']:>6.3f} {r['p_value']:>9.2g} {r['overlap']:>8.3f} "
                     f"{r['median_a']:>11.4g} {r['median_b']:>11.4g}")
    if metrics["gap"]:
        lines.append("gap score (domain classifier accuracy, 0.5 = indistinguishable, 1.0 = fully separable):")
    for name, g in metrics["gap"].items():
        extra = f", MMD^2 {g['mmd2']:.3f}" if "mmd2" in g else ""
        lines.append(f"  {name:<13} {g['accuracy']:.3f} +/- {g['accuracy_std']:.3f} "
                     f"({g['n_per_domain']} per domain, {g['folds']}-fold{extra})")
    for note in metrics.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"run folder: {out}")
    return "\n".join(lines)
