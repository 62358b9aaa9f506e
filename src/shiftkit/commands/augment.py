"""`shiftkit augment`: label-preserving, class-balanced augmentation from a plan or a blind op list."""

from __future__ import annotations

import json

from shiftkit.augment.pipeline import augment_dataset
from shiftkit.augment.policy import DEFAULT_OPS, KNOWN_OPS, Plan, plan_from_ops
from shiftkit.common_args import add_json, add_seed, add_task, epilog
from shiftkit.data import open_dataset
from shiftkit.errors import ShiftkitError

HELP = "write an augmented copy of a dataset: balance minority classes, or follow an analysis plan"


def configure(p) -> None:
    p.add_argument("--data", required=True, help="dataset to augment (any format shiftkit reads)")
    p.add_argument("--out", required=True, help="output dataset folder (same format as --data)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--plan", help="plan JSON written by `shiftkit analyze` (ops, strengths, classes, counts)")
    src.add_argument("--balance", action="store_true", help="oversample minority classes with --ops at default strengths")
    src.add_argument("--copies", type=int, help="N augmented copies of every image (no balancing)")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"comma list for --balance/--copies; known: {', '.join(KNOWN_OPS)}")
    p.add_argument("--ratio", type=float, default=1.0, help="--balance: grow each class to RATIO x the largest (default 1.0)")
    p.add_argument("--classes", default=None, help="--balance: comma list of classes that may grow (default all)")
    p.add_argument("--only-new", action="store_true", help="write only the new samples, not the originals")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_task(p)
    add_seed(p)
    add_json(p)
    p.epilog = epilog(
        "shiftkit augment --data train --balance --ops hflip,vflip,rot90,brightness,blur --out train_bal",
        "shiftkit augment --data train --plan runs/analysis/plan.json --out train_guided",
    )


def run(args) -> int:
    ds = open_dataset(args.data, task=args.task)
    classes = args.classes.split(",") if args.classes else None
    if args.plan:
        plan = Plan.load(args.plan)
    else:
        ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        if not ops:
            raise ShiftkitError("--ops is empty", None, f"name at least one of {', '.join(KNOWN_OPS)}")
        plan = plan_from_ops(ops, classes, args.ratio)
    result = augment_dataset(ds, plan, args.out, seed=args.seed, only_new=args.only_new, copies=args.copies,
                             overwrite=args.overwrite, provenance={"data": str(args.data)})
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        added = ", ".join(f"{c}: +{n}" for c, n in result.written_new.items()) or "none"
        print(f"new samples: {added}; originals copied: {result.copied}; boxes dropped by crops: {result.boxes_dropped}")
        for e in result.errors:
            print(f"skipped: {e}")
        print(f"dataset written to {result.out}")
    return 0
