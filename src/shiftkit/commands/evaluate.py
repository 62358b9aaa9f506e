"""`shiftkit evaluate`: score a checkpoint on labeled data (metrics, confusion matrix, predictions CSV)."""

from __future__ import annotations

import argparse
import json

from shiftkit.common_args import add_inference, epilog

HELP = "evaluate a trained model on labeled data: accuracy, balanced accuracy, per-class P/R/F1, confusion matrix"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit evaluate --model runs/dann/checkpoints/best.safetensors --data data/target_test --out runs/dann/eval",
        "shiftkit evaluate --model runs/minent/checkpoints/best.safetensors --model runs/advent/checkpoints/best.safetensors "
        "--data data/digit-scenes/target-test --out runs/ensemble",
    )
    p.add_argument("--model", required=True, action="append",
                   help="checkpoint (.safetensors) written by `shiftkit train`; segmentation: repeat it to evaluate the "
                        "ensemble (mean probabilities, e.g. ADVENT's MinEnt + AdvEnt)")
    p.add_argument("--data", required=True, help="labeled folder (one sub-folder per class)")
    p.add_argument("--out", default=None, help="folder for metrics.json, predictions.csv, figures/confusion.png")
    add_inference(p)


def run(args: argparse.Namespace) -> int:
    from shiftkit.train import evaluate

    r = evaluate(args.model if len(args.model) > 1 else args.model[0], args.data, out=args.out, batch_size=args.batch_size, device=args.device, workers=args.workers,
                 on_bad=args.on_bad, progress=not args.no_progress)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    if "miou" in r:
        print(f"{r['n']} images: mIoU {r['miou']:.4f}, pixel accuracy {r['pixel_accuracy']:.4f}")
        for c in r["classes"]:
            v = r.get(f"iou_{c}")
            print(f"  {c:20s} IoU {'-' if v is None else f'{v:.3f}'}")
        if args.out:
            print(f"run folder: {r['out']}")
        return 0
    print(f"{r['n']} images: accuracy {r['accuracy']:.4f}, balanced accuracy {r['balanced_accuracy']:.4f}, "
          f"macro F1 {r['macro_f1']:.4f}")
    for c in r["classes"]:
        print(f"  {c:20s} precision {r[f'precision_{c}']:.3f}  recall {r[f'recall_{c}']:.3f}  f1 {r[f'f1_{c}']:.3f}  "
              f"n {r[f'support_{c}']}")
    if r["skipped_images"]:
        print(f"  skipped {len(r['skipped_images'])} unreadable image(s)")
    if args.out:
        print(f"run folder: {r['out']}")
    return 0
