"""`shiftkit adapt`: source-free adaptation of a trained model to unlabeled target images.

There is deliberately no source option: the trained model and the target images are all it gets.
`--method shot` adapts a classifier; `--method das3` a segmentation model (three stages, each its
own run folder OUT/stage<k>; `--stages` picks them, `--resume` reuses finished ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shiftkit.common_args import (
    add_device,
    add_json,
    add_no_progress,
    add_on_bad,
    add_seed,
    add_speed,
    add_workers,
    epilog,
)
from shiftkit.errors import ShiftkitError

HELP = "adapt a trained model to unlabeled target images without its source data (SHOT, DAS3)"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit adapt --model ccexam:svhn --target data/mnist/train --target-test data/mnist/test --method shot --out runs/shot",
        "shiftkit adapt --model svhn.pth --arch svhn_net --target T --out runs/shot --epochs 10",
        "shiftkit adapt --model ccexam:svhn --target T --balanced-labels --lr 0.05 --epochs 12 --iters-per-epoch 50 "
        "--selftrain-epochs 64 --distill-epochs 50 --amp on --channels-last --out runs/b4   # B4's three stages",
        "shiftkit adapt --model runs/train/checkpoints/best.safetensors --target T --out runs/shot",
        "shiftkit adapt --model runs/seg/checkpoints/best.safetensors --target T --target-test TT --method das3 --out runs/das3",
        "shiftkit adapt --model runs/seg/checkpoints/best.safetensors --target T --method das3 --stages 1,2 --out runs/das3",
    ) + ("\n\n--model takes a shiftkit checkpoint (.safetensors, architecture read from it), a plain PyTorch\n"
         "state_dict with --arch, or ccexam:svhn|mnist|usps (the ccexam digit models, fetched and verified).\n"
         "No source data is read: there is no --source option. Target-test labels only score.\n"
         "das3 (segmentation) runs stage 1 (BatchNorm statistics re-estimated on the target, then focal\n"
         "entropy + weighted diversity, classifier frozen), stage 2\n"
         "(positive + negative pseudo labels), stage 3 (easy/hard split, ClassMix) in OUT/stage1..3;\n"
         "--resume reuses finished stages and continues an interrupted one.")
    d = p.add_argument_group("model and data")
    d.add_argument("--model", required=True, help="checkpoint (.safetensors), state_dict (.pth/.pt, with --arch) or ccexam:NAME")
    d.add_argument("--arch", default=None, choices=["svhn_net", "mnist_net", "usps_net"],
                   help="architecture of a plain state_dict (the ccexam networks)")
    d.add_argument("--target", required=True, help="unlabeled target images (a folder; class sub-folders are ignored)")
    d.add_argument("--target-test", default=None, help="labeled target folder, used only to score")
    add_on_bad(d)
    a = p.add_argument_group("method")
    a.add_argument("--method", default="shot", choices=["shot", "das3"],
                   help="shot (classification) or das3 (segmentation)")
    a.add_argument("--beta", type=float, default=0.3, help="shot: pseudo-label loss weight (paper: 0.3)")
    a.add_argument("--im-weight", type=float, default=1.0, help="shot: information-maximisation weight")
    a.add_argument("--balanced-labels", action="store_true",
                   help="shot: centroid pseudo labels under equal class shares (Sinkhorn; for balanced targets)")
    a.add_argument("--selftrain-epochs", type=int, default=0,
                   help="shot: then a self-training stage (OUT/selftrain) of this many epochs from SHOT's choice: "
                        "labels refreshed every epoch, the most certain share of each class growing 0.3 -> 0.9, "
                        "FixMatch consistency on the rest (0 = none)")
    a.add_argument("--selftrain-lr", type=float, default=0.01, help="shot: learning rate of the self-training stage")
    a.add_argument("--distill-epochs", type=int, default=0,
                   help="shot: then a distillation stage (OUT/distill) of this many epochs: the last stage's choice labels "
                        "the target once and a freshly initialised copy of the architecture (a pretrained backbone starts "
                        "from its pretrained weights) learns the most certain --distill-fraction of each class on "
                        "augmented views (0 = none)")
    a.add_argument("--distill-fraction", type=float, default=0.8, help="shot: share of each predicted class the student learns")
    a.add_argument("--distill-lr", type=float, default=0.05, help="shot: learning rate of the distillation stage (SGD, cosine)")
    a.add_argument("--distill-batch-size", type=int, default=128, help="shot: batch size of the distillation stage")
    a.add_argument("--stages", default="1,2,3", help="das3: stages to run, e.g. 1,2,3 or 2,3 (ablations)")
    a.add_argument("--alpha", type=float, default=0.5, help="das3 stage 1: weight of certain pixels (uncertain: 1 - alpha)")
    a.add_argument("--gamma", type=float, default=2.0, help="das3 stage 1: focal exponent shrinking confident pixels' loss")
    a.add_argument("--lambda-div", type=float, default=1.0, help="das3 stage 1: weighted diversity loss weight")
    a.add_argument("--prior-from", default="hard", choices=["hard", "soft"],
                   help="das3 stage 1: diversity prior from the start model's argmax class shares (hard) or mean probabilities")
    a.add_argument("--prior-smoothing", type=float, default=0.01, help="das3 stage 1: prior mixed with this share of uniform")
    a.add_argument("--no-bn-adapt", dest="bn_adapt", action="store_false",
                   help="das3 stage 1: keep the source BatchNorm statistics (default: re-estimate them on the target, AdaBN)")
    a.add_argument("--train-params", default="body", choices=["body", "bn"],
                   help="das3 stage 1: parameters trained: body (all but the classifier) or bn (BatchNorm scales/shifts only, TENT)")
    a.add_argument("--align-jitter", type=float, default=0.0,
                   help="das3 stage 1: colour-change strength of the images the losses read (0: none)")
    a.add_argument("--jitter", type=float, default=0.3,
                   help="das3 stages 2-3: colour-change strength of the student's images (the teacher labels the originals)")
    a.add_argument("--top-k", type=float, default=0.5, help="das3 stages 2-3: share of each class's pixels per image kept as pseudo labels")
    a.add_argument("--tau", type=float, default=0.05, help="das3 stage 2: classes below this probability are negative labels")
    a.add_argument("--easy-share", type=float, default=0.3, help="das3 stage 3: share of target images taken as easy (lowest entropy)")
    o = p.add_argument_group("optimisation (defaults: shot: SHOT's digit recipe, SGD; das3: AdamW lr 1e-4, batch 8)")
    o.add_argument("--epochs", type=int, default=None, help="epochs (das3: per stage; default 10)")
    o.add_argument("--batch-size", type=int, default=None, help="default 64 (shot), 8 (das3)")
    o.add_argument("--lr", type=float, default=None, help="default 0.01 (shot: SGD, lr (1 + 10 p)^-0.75), 1e-4 (das3: AdamW, cosine)")
    o.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (shot), 0 (das3)")
    o.add_argument("--size", type=int, default=None, help="input size (default: the checkpoint's)")
    o.add_argument("--iters-per-epoch", type=int, default=None, help="steps per epoch (default: one pass over the target)")
    add_speed(o)
    s = p.add_argument_group("output")
    s.add_argument("--out", required=True, help="run folder (config.json, log.jsonl, metrics.json, checkpoints/)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_no_progress(s)
    add_seed(s)
    add_device(s)
    add_workers(s)
    add_json(s)


def later_shot_stages(args: argparse.Namespace, r: dict, run_options: dict, settings: dict) -> dict:
    """Self-training (OUT/selftrain) from SHOT's choice, then distillation (OUT/distill) from the last
    stage's choice into a fresh copy of the architecture; each stage's figures under its name."""
    from shiftkit.adapt.shot import ShotDistill, ShotSelfTrain, fresh_copy
    from shiftkit.adapt.sourcefree import adapt
    from shiftkit.models.ccexam import load_model

    if args.selftrain_epochs:
        st = adapt(load_model(r["checkpoint"]), args.target, method=ShotSelfTrain(), out=Path(args.out) / "selftrain",
                   **run_options, **{**settings, "epochs": args.selftrain_epochs, "lr": args.selftrain_lr})
        r = {**r, "selftrain": {k: v for k, v in st.items() if k != "history"}}
    if args.distill_epochs:
        teacher = load_model(r.get("selftrain", r)["checkpoint"])
        d = adapt(fresh_copy(teacher, args.seed), args.target, method=ShotDistill(teacher, fraction=args.distill_fraction),
                  out=Path(args.out) / "distill", **run_options,
                  **{**settings, "epochs": args.distill_epochs, "lr": args.distill_lr, "schedule": "cosine",
                     "batch_size": args.distill_batch_size})
        r = {**r, "distill": {k: v for k, v in d.items() if k != "history"}}
    return r


def run(args: argparse.Namespace) -> int:
    from shiftkit.adapt.sourcefree import adapt, build_sourcefree_method
    from shiftkit.models.ccexam import load_model

    if args.method == "das3":
        method = build_sourcefree_method("das3", stages=args.stages,
                                         stage1={"alpha": args.alpha, "gamma": args.gamma, "lambda_div": args.lambda_div,
                                                 "prior_from": args.prior_from, "prior_smoothing": args.prior_smoothing,
                                                 "bn_adapt": args.bn_adapt, "train": args.train_params,
                                                 "jitter": args.align_jitter},
                                         stage2={"top_k": args.top_k, "tau": args.tau, "jitter": args.jitter},
                                         stage3={"top_k": args.top_k, "easy_share": args.easy_share, "jitter": args.jitter})
    else:
        method = build_sourcefree_method(args.method, beta=args.beta, im_weight=args.im_weight,  # bad options fail first
                                         balanced_labels=args.balanced_labels)
        for flag, value in (("--selftrain-epochs", args.selftrain_epochs), ("--distill-epochs", args.distill_epochs)):
            if value < 0:
                raise ShiftkitError(f"{flag} must be >= 0, got {value}", None, "pass 0 for none")
        if not 0.0 < args.distill_fraction <= 1.0:
            raise ShiftkitError(f"--distill-fraction must be in (0, 1], got {args.distill_fraction}", None, "e.g. 0.8")
    model = load_model(args.model, args.arch)
    settings = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                  ("weight_decay", args.weight_decay)) if v is not None}
    size = args.size
    if size is None and args.method == "das3" and str(args.model).endswith(".safetensors"):
        from shiftkit.train.checkpoint import read_weights

        size = ((read_weights(args.model)[1] or {}).get("input_size") or [None])[0]
    if size is not None:
        settings["size"] = int(size)
    run_options = {"target_test": args.target_test, "iters_per_epoch": args.iters_per_epoch, "seed": args.seed,
                   "device": args.device, "workers": args.workers, "resume": args.resume, "on_bad": args.on_bad,
                   "progress": not args.no_progress, "amp": args.amp, "channels_last": args.channels_last}
    r = adapt(model, args.target, method=method, out=args.out, **run_options, **settings)
    if args.method == "shot":
        r = later_shot_stages(args, r, run_options, settings)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "history"}, indent=2))
        return 0
    if args.method == "das3":
        print("das3 (source-free):")
        for k, st in r["stages"].items():
            sel = st.get("selected", {})
            figs = "  ".join(f"{n} {sel[n]:.4f}" for n in ("target_test_miou", "select_im") if n in sel)
            print(f"  stage {k} {st['status']:9s} {figs}")
        print(f"run folder: {r['out']}  (model: {r['checkpoint']})")
        return 0
    from shiftkit.commands.train import print_run

    for stage in (r, r.get("selftrain"), r.get("distill")):
        if stage is not None:
            print_run(stage, f"{stage['method']} (source-free)")
    return 0
