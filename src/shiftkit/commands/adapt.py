"""`shiftkit adapt`: source-free adaptation of a trained model to unlabeled target images.

There is deliberately no source option: the trained model and the target images are all it gets.
"""

from __future__ import annotations

import argparse
import json

from shiftkit.common_args import add_device, add_json, add_no_progress, add_on_bad, add_seed, add_workers, epilog

HELP = "adapt a trained model to unlabeled target images without its source data (SHOT)"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit adapt --model ccexam:svhn --target data/mnist/train --target-test data/mnist/test --method shot --out runs/shot",
        "shiftkit adapt --model svhn.pth --arch svhn_net --target T --out runs/shot --epochs 10",
        "shiftkit adapt --model runs/train/checkpoints/best.safetensors --target T --out runs/shot",
    ) + ("\n\n--model takes a shiftkit checkpoint (.safetensors, architecture read from it), a plain PyTorch\n"
         "state_dict with --arch, or ccexam:svhn|mnist|usps (the ccexam digit models, fetched and verified).\n"
         "No source data is read: there is no --source option. Target-test labels only score.")
    d = p.add_argument_group("model and data")
    d.add_argument("--model", required=True, help="checkpoint (.safetensors), state_dict (.pth/.pt, with --arch) or ccexam:NAME")
    d.add_argument("--arch", default=None, choices=["svhn_net", "mnist_net", "usps_net"],
                   help="architecture of a plain state_dict (the ccexam networks)")
    d.add_argument("--target", required=True, help="unlabeled target images (a folder; class sub-folders are ignored)")
    d.add_argument("--target-test", default=None, help="labeled target folder, used only to score")
    add_on_bad(d)
    a = p.add_argument_group("method")
    a.add_argument("--method", default="shot", help="shot (classification); das3 (segmentation) is not available yet")
    a.add_argument("--beta", type=float, default=0.3, help="SHOT pseudo-label loss weight (paper: 0.3)")
    a.add_argument("--im-weight", type=float, default=1.0, help="information-maximisation weight")
    o = p.add_argument_group("optimisation (defaults: SHOT's digit recipe)")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--batch-size", type=int, default=64)
    o.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, decayed as lr (1 + 10 p)^-0.75")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--iters-per-epoch", type=int, default=None, help="steps per epoch (default: one pass over the target)")
    s = p.add_argument_group("output")
    s.add_argument("--out", required=True, help="run folder (config.json, log.jsonl, metrics.json, checkpoints/)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_no_progress(s)
    add_seed(s)
    add_device(s)
    add_workers(s)
    add_json(s)


def run(args: argparse.Namespace) -> int:
    from shiftkit.adapt.sourcefree import adapt, build_sourcefree_method
    from shiftkit.models.ccexam import load_model

    method = build_sourcefree_method(args.method, beta=args.beta, im_weight=args.im_weight)  # das3 -> clear error first
    model = load_model(args.model, args.arch)
    r = adapt(
        model, args.target, method=method, target_test=args.target_test, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, iters_per_epoch=args.iters_per_epoch,
        seed=args.seed, device=args.device, workers=args.workers, resume=args.resume, on_bad=args.on_bad,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "history"}, indent=2))
        return 0
    sel = r["selected"]
    print(f"{r['method']} (source-free): selected epoch {None if r['selected_epoch'] is None else r['selected_epoch'] + 1} "
          f"by {r['select']} ({r['wall_s']:.1f} s)")
    for k in ("target_test_accuracy", "target_test_balanced_accuracy", "select_im"):
        if k in sel:
            print(f"  {k:32s} {sel[k]:.4f}")
    if r["skipped_images"]:
        print(f"  skipped {len(r['skipped_images'])} unreadable image(s), listed in {r['out']}/metrics.json")
    print(f"run folder: {r['out']}  (model: {r['checkpoint']})")
    return 0
