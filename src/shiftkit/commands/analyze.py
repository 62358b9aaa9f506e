"""`shiftkit analyze`: where does a model fail (by image property and class), and what to augment."""

from __future__ import annotations

import json
from pathlib import Path

from shiftkit.common_args import add_device, add_json, add_task, epilog
from shiftkit.errors import ShiftkitError

HELP = "find the image properties and classes a model fails on, and write an augmentation plan"


def configure(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="CSV path,label,predicted[,prob_<class>...] (e.g. from `shiftkit evaluate`)")
    src.add_argument("--model", help="shiftkit checkpoint: predictions are made on --data first")
    p.add_argument("--data", required=True, help="the labeled dataset the predictions are about (paths relative to it)")
    p.add_argument("--target", help="optional unlabeled target set: the plan also moves images toward its properties")
    p.add_argument("--out", required=True, help="run folder: metrics.json, plan.json, figures/")
    p.add_argument("--bins", type=int, default=5, help="quantile buckets per property (default 5)")
    p.add_argument("--symmetries", default="hflip",
                   help="comma list of geometric ops that keep labels for this data (hflip,vflip,rot90); rot90 is "
                        "dropped when the training images have a preferred orientation (see the plan's reasoning)")
    p.add_argument("--balance", default="full", choices=["full", "sqrt"],
                   help="grow minority classes to the largest (full, default) or to the geometric mean of their "
                        "count and the largest (sqrt: square-root balancing, half the prior shift)")
    p.add_argument("--workers", type=int, default=0, help="decoding workers for property computation")
    add_task(p)
    add_device(p)
    add_json(p)
    p.epilog = epilog(
        "shiftkit analyze --predictions runs/eval/predictions.csv --data data/elpv-defect/train --out runs/analysis",
        "shiftkit augment --data data/elpv-defect/train --plan runs/analysis/plan.json --out data/train_guided",
    )


def run(args) -> int:
    from shiftkit.analysis.drift import property_drift
    from shiftkit.analysis.properties import compute_properties
    from shiftkit.analysis.recommend import recommend_plan
    from shiftkit.analysis.sensitivity import Predictions, sensitivity
    from shiftkit.data import open_dataset
    from shiftkit.io import atomic_write_json
    from shiftkit.report.slices import slice_chart

    if args.bins < 2:
        raise ShiftkitError(f"--bins must be >= 2, got {args.bins}")
    out = Path(args.out)
    ds = open_dataset(args.data, task=args.task)
    if args.model:
        from shiftkit.train.evaluation import evaluate

        evaluate(args.model, ds, out=out / "evaluation", device=args.device, workers=args.workers)
        preds_path = out / "evaluation" / "predictions.csv"
    else:
        preds_path = Path(args.predictions)
    preds = Predictions.read_csv(preds_path)
    table = compute_properties(ds, workers=args.workers, device=args.device)
    sens = sensitivity(preds, table, bins=args.bins)
    target_table = drift_rows = None
    if args.target:
        target_table = compute_properties(open_dataset(args.target, task="unlabeled"), workers=args.workers, device=args.device)
        drift_rows = property_drift(table, target_table)
    symmetries = tuple(s.strip() for s in args.symmetries.split(",") if s.strip())
    try:  # is a quarter turn a symmetry of the data, not only of the labels? (the table's orientation column)
        plan = recommend_plan(sens, table, symmetries, target_table, drift_rows, balance=args.balance,
                              orientation=table["orientation"] if "rot90" in symmetries else None)
    except ValueError as exc:
        raise ShiftkitError(str(exc), None, "--symmetries takes hflip, vflip, rot90") from None
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for prop in sorted({s.property for s in sens.slices}):
        slice_chart(sens.slices, prop, figures / f"slices_{prop}.png")
    metrics = sens.to_dict()
    if drift_rows is not None:
        metrics["drift"] = drift_rows
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "plan.json", plan.to_dict())
    atomic_write_json(out / "config.json", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    if args.json:
        print(json.dumps({"metrics": str(out / "metrics.json"), "plan": plan.to_dict(),
                          "worst_slices": [s.to_dict() for s in sens.worst(10)]}, indent=2))
        return 0
    print(f"accuracy {sens.overall_accuracy:.3f}; recall " + ", ".join(f"{c} {r:.3f}" for c, r in sens.recall.items()))
    print("worst slices (rate, 95% CI, n; * = upper bound below overall):")
    for s in sens.worst(8):
        who = "all" if s.cls is None else s.cls
        print(f"  {'*' if s.significant else ' '} {s.property:<13} [{s.low:.4g}, {s.high:.4g}]  {who:<12} "
              f"{s.rate:.2f} ({s.ci_low:.2f}-{s.ci_high:.2f}) n={s.n}  overall {s.overall:.2f}")
    print("plan:")
    for line in plan.reasoning:
        print(f"  - {line}")
    print(f"plan written to {out / 'plan.json'}; charts in {figures}")
    return 0
