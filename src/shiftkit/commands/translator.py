"""`shiftkit translator`: train a contrastive unpaired translator (CUT) and score what it makes."""

from __future__ import annotations

import argparse
import json

from shiftkit.common_args import add_device, add_json, add_no_progress, add_seed, add_speed, epilog

HELP = "learned unpaired translation A -> B (CUT / FastCUT): `translator train`, `translator score`"


def _layers(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit translator train --source data/mono --target data/poly --out runs/mono2poly-cut --size 128 --steps 5000 --amp on",
        "shiftkit translator train --source A --target B --out T --fast --size 64 --steps 800 --threads 1",
        "shiftkit transfer --source A --target B --method learned --translator T --mix --out A2B",
        "shiftkit translator score --translator T --source A --target B",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train CUT (or FastCUT with --fast) from A to B; resumes from OUT/checkpoints",
                       description="Train a contrastive unpaired translator (CUT, Park et al. 2020) from A to B.",
                       formatter_class=fmt, epilog=epilog(
                           "shiftkit translator train --source A --target B --out T --size 128 --steps 5000 --amp on",
                           "shiftkit translator train --source A --target B --out T --fast --steps 3000 --device cuda"))
    t.add_argument("--source", required=True, help="dataset A (any format; labels unused)")
    t.add_argument("--target", required=True, help="dataset B whose look to learn")
    t.add_argument("--out", required=True, help="run folder (config.json, log.jsonl, metrics.json, checkpoints/, figures/)")
    t.add_argument("--size", type=int, default=128, help="training crop size in pixels, multiple of 4 (default 128)")
    t.add_argument("--load-size", type=int, default=0,
                   help="resize images so the shorter side is this before cropping --size (default 1.125 x size; "
                        "larger = finer-scale patches, applied at that scale later)")
    t.add_argument("--steps", type=int, default=5000, help="optimisation steps; the lr decays linearly over the second half "
                        "(default 5000: about 18 min with --amp on, 28 min in float32, on one AMX CPU core at 128 px)")
    t.add_argument("--batch-size", type=int, default=1, help="images per step from each set (CUT uses 1; default 1)")
    t.add_argument("--fast", action="store_true", help="FastCUT: lambda_NCE 10, no identity term, flip-equivariance")
    t.add_argument("--ngf", type=int, default=16, help="generator width (default 16; CUT uses 64)")
    t.add_argument("--blocks", type=int, default=6, help="ResNet blocks in the generator (default 6; CUT uses 9)")
    t.add_argument("--ndf", type=int, default=32, help="discriminator width (default 32; CUT uses 64)")
    t.add_argument("--nce-layers", type=_layers, default=None, help="encoder layers for PatchNCE (default 0,4,8,12,16)")
    t.add_argument("--patches", type=int, default=256, help="patches per layer for PatchNCE (default 256)")
    t.add_argument("--lambda-nce", type=float, default=None, help="PatchNCE weight (default 1, or 10 with --fast)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4, betas 0.5, 0.999)")
    t.add_argument("--max-images", type=int, default=0, help="use a seeded subset of this many images per set (0 = all)")
    t.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every N steps (default 200)")
    t.add_argument("--grid-every", type=int, default=500, help="sample grid every N steps, 0 = only at the end (default 500)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = default; 1 is fastest on a busy machine)")
    add_speed(t)
    add_no_progress(t)
    add_seed(t)
    add_device(t)
    add_json(t)

    s = sub.add_parser("score", help="is A' any good: Fréchet distance (MobileNetV2), label preservation, gap score",
                       description="Score a translator: (a) Fréchet distance on MobileNetV2 features (not Inception-FID), "
                                   "A' vs B against A vs B; (b) label preservation (a classifier trained on A scores A') "
                                   "and edge alignment A vs A'; (c) the gap score of A vs B and A' vs B.",
                       formatter_class=fmt, epilog=epilog(
                           "shiftkit translator score --translator T --source A --target B",
                           "shiftkit translator score --translator T --source A --target B --classifier runs/src/checkpoints/best.safetensors --json"))
    s.add_argument("--translator", required=True, help="run folder of `translator train` (or its .safetensors)")
    s.add_argument("--source", required=True, help="dataset A")
    s.add_argument("--target", required=True, help="dataset B")
    s.add_argument("--classifier", default=None,
                   help="a shiftkit classification checkpoint trained on A (default: logistic regression on MobileNetV2 features, cross-validated on A)")
    s.add_argument("--adabn", action="store_true",
                   help="re-estimate the --classifier's BatchNorm statistics on A and on A' before scoring each (AdaBN): "
                        "a global change of style then does not count as lost labels")
    s.add_argument("--max-images", type=int, default=300, help="seeded subset size per set (default 300)")
    s.add_argument("--feature-size", type=int, default=160, help="MobileNetV2 input size (default 160)")
    s.add_argument("--batch-size", type=int, default=16, help="images per translation batch (default 16)")
    s.add_argument("--no-gap", action="store_true", help="skip the gap score")
    s.add_argument("--out", default=None, help="also write the result JSON here")
    add_no_progress(s)
    add_seed(s)
    add_device(s)
    add_json(s)


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _score(args)


def _train(args: argparse.Namespace) -> int:
    from shiftkit.train.translator_loop import TranslatorConfig, train_translator

    cfg = TranslatorConfig(
        source=args.source, target=args.target, out=args.out, size=args.size, load_size=args.load_size, steps=args.steps, batch_size=args.batch_size,
        preset="fastcut" if args.fast else "cut", ngf=args.ngf, n_blocks=args.blocks, ndf=args.ndf, nce_layers=args.nce_layers,
        num_patches=args.patches, lambda_nce=args.lambda_nce, lr=args.lr, seed=args.seed, device=args.device,
        amp=args.amp, channels_last=args.channels_last, ckpt_every=args.ckpt_every, grid_every=args.grid_every, max_images=args.max_images,
        threads=args.threads, progress=not (args.no_progress or args.json),
    )
    m = train_translator(cfg)
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    losses = ", ".join(f"{k} {v:.3f}" for k, v in m["final_losses"].items())
    print(f"{m['preset']} translator: {m['steps']} steps at {m['size']} px in {m['train_s']:.0f} s "
          f"({m['s_per_step']:.2f} s/step, {m['device']}); losses (last 50 steps): {losses}")
    print(f"samples: {m['grid']}")
    print(f"run folder: {args.out}  (use it as --translator)")
    return 0


def _score(args: argparse.Namespace) -> int:
    from shiftkit.io import atomic_write_json
    from shiftkit.transfer.learned import score_translator

    r = score_translator(args.translator, args.source, args.target, classifier=args.classifier, max_images=args.max_images,
                         feature_size=args.feature_size, seed=args.seed, device=args.device, batch_size=args.batch_size,
                         gap=not args.no_gap, progress=not (args.no_progress or args.json), adabn=args.adabn)
    if args.out:
        atomic_write_json(args.out, r)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    fd = r["frechet"]
    print(f"Fréchet (MobileNetV2, not Inception-FID): A vs B {fd['a_vs_b']:.2f} -> A' vs B {fd['a2_vs_b']:.2f}"
          f"  (A vs A' {fd['a_vs_a2']:.2f}; {r['n']['a']} / {r['n']['b']} images)")
    lp = r["label_preservation"]
    if "miou_a" in lp:
        print(f"label preservation: mIoU A {lp['miou_a']:.3f} -> A' {lp['miou_a2']:.3f} (ratio {lp['ratio']:.3f}; {lp['classifier']})")
    elif "ratio" in lp:
        print(f"label preservation: accuracy A {lp['accuracy_a']:.3f} -> A' {lp['accuracy_a2']:.3f} "
              f"(ratio {lp['ratio']:.3f}, agreement {lp['agreement']:.3f}; {lp['classifier']})")
        if "domain_standardized" in lp:
            print(f"  with A' features standardised by their own statistics: A' {lp['domain_standardized']['accuracy_a2']:.3f} "
                  f"(ratio {lp['domain_standardized']['ratio']:.3f})")
    else:
        print(f"label preservation: {lp.get('skipped')}")
    g = r["geometry"]
    print(f"edge alignment A vs A': {g['a_vs_a2']:.3f} (min {g['a_vs_a2_min']:.3f}; unrelated images: {g['baseline_a_vs_other_a']:.3f})")
    if "gap" in r:
        b, a = r["gap"]["before"], r["gap"]["after"]
        print("gap (domain-classifier accuracy, 0.5 = same): " + ", ".join(f"{k} {b[k]:.3f} -> {a[k]:.3f}" for k in b))
    if args.out:
        print(f"result: {args.out}")
    return 0
