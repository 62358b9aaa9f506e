"""`shiftkit train`: train or adapt a classifier; writes a run folder (config, log, metrics, checkpoints)."""

from __future__ import annotations

import argparse
import json

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

HELP = "train a classifier on a labeled source, optionally adapting to an unlabeled target (DANN, CDAN, MCC, ...)"


def configure(p: argparse.ArgumentParser) -> None:
    from shiftkit.adapt.registry import METHODS
    from shiftkit.adapt.seg_base import SEG_METHODS

    p.epilog = epilog(
        "shiftkit train --source data/mnist2digits/source --backbone small_cnn --epochs 5 --out runs/mnist",
        "shiftkit train --source S --target T --target-test TT --backbone mobilenet_v2 --method dann+mcc --out runs/dann",
        "shiftkit train --source S --target T --backbone mobilenet_v2 --freeze-backbone --method mcc --out runs/fast",
        "shiftkit train ... --out runs/dann --resume      # continue a killed run exactly",
    )
    d = p.add_argument_group("data")
    d.add_argument("--source", help="labeled source folder (one sub-folder per class)")
    d.add_argument("--target", help="unlabeled target folder (adaptation; label-free selection)")
    d.add_argument("--target-test", help="labeled target folder, used only to score (never to choose, unless --select target-test)")
    d.add_argument("--source-val", help="labeled source validation folder")
    d.add_argument("--task", choices=["classification", "segmentation"], default="classification",
                   help="classification (class folders) or segmentation (images/ + masks/)")
    d.add_argument("--size", type=int, default=None, help="input size in pixels (default: the backbone's, 28 or 224)")
    add_on_bad(d)
    d.add_argument("--balanced-sampling", action="store_true", help="draw source classes equally often")
    d.add_argument("--class-weights", default=None, help="'balanced' or comma-separated weights, one per class")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="small_cnn", choices=["small_cnn", "mobilenet_v2", "efficientnet_lite0"])
    m.add_argument("--pretrained", dest="pretrained", action="store_true", default=True,
                   help="start from ImageNet weights where the backbone has them (default)")
    m.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random initialisation")
    m.add_argument("--arch", default=None, choices=["deeplabv2", "unet"],
                   help="segmentation model (default: unet with small_cnn, else deeplabv2 on the backbone)")
    m.add_argument("--bottleneck", type=int, default=None, help="Linear-BN-ReLU bottleneck width before the head (e.g. 256)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout before the head")
    m.add_argument("--init", default=None, help="start from this checkpoint (.safetensors) instead of --backbone")
    m.add_argument("--freeze-stages", type=int, default=0, help="freeze the first N backbone stages")
    m.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics frozen")
    m.add_argument("--freeze-backbone", action="store_true",
                   help="freeze the whole backbone and train on cached features (seconds per epoch on CPU)")
    a = p.add_argument_group("method")
    a.add_argument("--method", default="source-only",
                   help=f"classification: one of {', '.join(METHODS)}; parts dann|cdan|cdan+e|mcc|im|self-training "
                        f"join with '+'. Segmentation (--task segmentation): one of {', '.join(SEG_METHODS)}")
    a.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting, e.g. mcc_temperature=2.5, dann_weight=1, st_tau=0.9, disc_hidden=256")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=1e-3, help="backbone learning rate (head: x --head-lr-mult)")
    o.add_argument("--head-lr-mult", type=float, default=10.0)
    o.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--no-nesterov", dest="nesterov", action="store_false", default=True)
    o.add_argument("--weight-decay", type=float, default=1e-2)
    o.add_argument("--schedule", choices=["cosine", "constant", "dann"], default="cosine")
    o.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 1 epoch, at most 5%%)")
    o.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--source-jitter", type=float, default=0.0, metavar="S",
                   help="recolour each labelled source image every step: brightness +-S, contrast x(1 +- S) about the "
                        "image mean, a random channel order, grey with probability S/2 (labels, masks untouched; 0 = off)")
    o.add_argument("--source-invert", type=float, default=0.0, metavar="P",
                   help="invert each labelled source image (1 - x) with probability P, for a target whose objects may be "
                        "darker than their surroundings where the source's are lighter (0 = off)")
    o.add_argument("--iters-per-epoch", type=int, default=None, help="steps per epoch (default: one pass over the source)")
    add_speed(o)
    s = p.add_argument_group("selection and output")
    s.add_argument("--select", choices=["label-free", "target-test", "source-val", "last"], default=None,
                   help="how to choose best.safetensors (default: label-free with --target, else source-val, else last)")
    s.add_argument("--select-score", choices=["im", "snd"], default="im", help="label-free score")
    s.add_argument("--eval-every", type=int, default=1, help="evaluate and select every N epochs (the last always)")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--ckpt-every", type=int, default=None, help="also checkpoint every N steps (epochs always)")
    s.add_argument("--log-every", type=int, default=20, help="log.jsonl line every N steps")
    add_no_progress(s)
    add_seed(s)
    add_device(s)
    add_workers(s)
    add_json(s)


def _options(items: list[str]) -> dict:
    from shiftkit.errors import ShiftkitError

    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise ShiftkitError(f"--method-option {it!r} is not KEY=VALUE", None, "e.g. --method-option mcc_temperature=2.5")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _class_weights(v: str | None):
    if v is None or v == "balanced":
        return v
    from shiftkit.errors import ShiftkitError

    try:
        return [float(x) for x in v.split(",")]
    except ValueError:
        raise ShiftkitError(f"--class-weights {v!r} is neither 'balanced' nor numbers", None, "e.g. --class-weights 1,3") from None


def run(args: argparse.Namespace) -> int:
    from shiftkit.train import fit

    if not args.source and not args.init:
        from shiftkit.errors import ShiftkitError

        raise ShiftkitError("--source is required", None, "give the labeled source folder")
    r = fit(
        args.source, args.target, method=args.method, target_test=args.target_test, source_val=args.source_val,
        out=args.out, task=args.task, arch=args.arch, backbone=args.backbone, pretrained=args.pretrained, bottleneck=args.bottleneck,
        dropout=args.dropout, init=args.init, method_options=_options(args.method_option), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, head_lr_mult=args.head_lr_mult, optimizer=args.optimizer,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, label_smoothing=args.label_smoothing, size=args.size,
        source_jitter=args.source_jitter, source_invert=args.source_invert,
        freeze_stages=args.freeze_stages, freeze_bn=args.freeze_bn, freeze_backbone=args.freeze_backbone,
        balanced_sampling=args.balanced_sampling, class_weights=_class_weights(args.class_weights),
        iters_per_epoch=args.iters_per_epoch, select=args.select, select_score=args.select_score,
        eval_every=args.eval_every, amp=args.amp,
        channels_last=args.channels_last, seed=args.seed, device=args.device, workers=args.workers, resume=args.resume,
        ckpt_every=args.ckpt_every, log_every=args.log_every, on_bad=args.on_bad, progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "history"}, indent=2))
        return 0
    print_run(r, f"method {r['method']}")
    return 0


def print_run(r: dict, title: str) -> None:
    """The human summary of one engine run (train, or one source-free stage): chosen epoch, figures, folder."""
    sel = r["selected"]
    print(f"{title}: selected epoch {None if r['selected_epoch'] is None else r['selected_epoch'] + 1} "
          f"by {r['select']} ({r['wall_s']:.1f} s{_earlier(r)})")
    for k in ("target_test_accuracy", "target_test_balanced_accuracy", "target_test_miou", "source_val_accuracy",
              "source_val_miou", "select_im", "select_snd"):
        if k in sel:
            print(f"  {k:32s} {sel[k]:.4f}")
    if r["skipped_images"]:
        print(f"  skipped {len(r['skipped_images'])} unreadable image(s), listed in {r['out']}/metrics.json")
    print(f"run folder: {r['out']}  (model: {r['checkpoint']})")


def _earlier(r: dict) -> str:
    """For a resumed or reused run, whose wall_s is this invocation's: the time of all its epochs."""
    total = r.get("epochs_s")
    return f"; its epochs {total:.1f} s in all" if total is not None and total > r["wall_s"] else ""
