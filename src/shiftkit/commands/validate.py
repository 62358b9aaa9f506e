"""`shiftkit validate PATH`: list every problem in a dataset, one line each; exit 1 if any."""

from __future__ import annotations

import argparse
import json

from shiftkit.common_args import add_json, add_task, epilog

HELP = "check a dataset: unreadable/corrupt images, stray files, masks, boxes, duplicates, class balance"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="dataset folder, CSV manifest or COCO .json")
    add_task(p)
    add_json(p)
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images above N pixels as decompression bombs (default 268435456)")
    p.add_argument("--few-samples", type=int, default=5, metavar="N", help="flag classes with fewer than N samples (default 5)")
    p.add_argument("--imbalance-ratio", type=float, default=10.0, metavar="R",
                   help="flag when the largest class has more than R times the smallest (default 10)")
    p.add_argument("--near-dup-bits", type=int, default=4, metavar="B",
                   help="near duplicates: 64-bit pHash Hamming distance <= B (default 4; -1 skips the check)")
    p.epilog = epilog(
        "shiftkit validate data/cells",
        "shiftkit validate data/coco/annotations.json --json > report.json",
        "shiftkit validate data/photos --task unlabeled --near-dup-bits 6",
    )


def run(args: argparse.Namespace) -> int:
    from shiftkit.data.images import MAX_PIXELS
    from shiftkit.data.validate import validate

    report = validate(
        args.path,
        task=args.task,
        few_samples=args.few_samples,
        imbalance_ratio=args.imbalance_ratio,
        near_dup_bits=None if args.near_dup_bits < 0 else args.near_dup_bits,
        max_pixels=args.max_pixels if args.max_pixels is not None else MAX_PIXELS,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for p in report.problems:
            print(p.line())
        print(report.summary())
    return 0 if report.ok else 1
