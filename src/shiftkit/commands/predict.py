"""`shiftkit predict`: class predictions with per-class probabilities for a folder of images."""

from __future__ import annotations

import argparse
import json

from shiftkit.common_args import add_inference, epilog

HELP = "predict classes for new images with a trained model; writes a CSV (path,label,predicted,confidence,prob_<class>...)"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog("shiftkit predict --model runs/dann/checkpoints/best.safetensors --data new_images/ --out preds.csv")
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) written by `shiftkit train`")
    p.add_argument("--data", required=True, help="folder of images (flat or one sub-folder per class)")
    p.add_argument("--out", required=True, help="CSV file to write")
    add_inference(p)


def run(args: argparse.Namespace) -> int:
    from shiftkit.train import predict

    r = predict(args.model, args.data, args.out, batch_size=args.batch_size, device=args.device, workers=args.workers,
                on_bad=args.on_bad, progress=not args.no_progress)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in r["predicted_counts"].items())
    print(f"{r['n']} images predicted: {counts}")
    if r["skipped_images"]:
        print(f"  skipped {len(r['skipped_images'])} unreadable image(s)")
    print(f"predictions: {r['out']}")
    return 0
