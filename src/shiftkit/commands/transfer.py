"""`shiftkit transfer`: make a labeled source set look like a target set, training-free."""

from __future__ import annotations

import argparse
import json
import sys

from shiftkit.common_args import (
    add_device,
    add_json,
    add_no_progress,
    add_on_bad,
    add_seed,
    add_task,
    add_workers,
    epilog,
)

HELP = "write A' = source images restyled like the target set (fda, histogram, color-stats, pca, learned); labels unchanged"

METHOD_NAMES = ("fda", "histogram", "color-stats", "pca", "learned")


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit transfer --source data/mono --target data/poly --method fda --beta 0.01 --out runs/mono2poly",
        "shiftkit transfer --source A --target B --method histogram --reference set --mix --out A2B",
        "torchrun --nproc-per-node 4 -m shiftkit transfer --source A --target B --method pca --out A2B",
    )
    p.add_argument("--source", required=True, help="labeled dataset A (any format the data layer reads)")
    p.add_argument("--target", required=True, help="dataset B whose look to copy (labels unused)")
    p.add_argument("--out", required=True, help="output dataset A' (same format as A); must not exist inside A or B")
    p.add_argument("--method", choices=METHOD_NAMES, default="fda", help="transfer method (default fda)")
    p.add_argument("--translator", default=None, help="learned: run folder of `shiftkit translator train` (or its .safetensors)")
    p.add_argument("--beta", type=float, default=0.01, help="fda: low-frequency window, fraction of min(H, W) (default 0.01)")
    p.add_argument("--reference", choices=("image", "set"), default="image",
                   help="histogram/color-stats: match each paired target image, or the target set's statistics (default image)")
    p.add_argument("--pair", choices=("random", "nearest"), default="random",
                   help="which target styles each source: seeded random, or the stylistically nearest (default random)")
    p.add_argument("--pair-k", type=int, default=1, help="nearest: pick (seeded) among the k nearest targets (default 1)")
    p.add_argument("--max-targets", type=int, default=0, help="use a seeded subset of this many target images (0 = all)")
    p.add_argument("--mix", action="store_true", help="write A and A' together (A' files get --suffix), ready to train on")
    p.add_argument("--suffix", default=None, help="file-name suffix of A' files with --mix (default __<method>)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (bounds memory; default 16)")
    p.add_argument("--figures", default=None, help="folder for grid.png and transfer.json (default OUT.figures beside OUT)")
    p.add_argument("--no-gap", action="store_true", help="skip the gap score (A vs B and A' vs B)")
    p.add_argument("--gap-max", type=int, default=300, help="images per set for the gap score (default 300)")
    add_on_bad(p, default="fail")
    p.add_argument("--overwrite", action="store_true", help="replace an existing finished --out")
    p.add_argument("--finalize", action="store_true", help="merge rank shards of a torchrun run without a process group, then report")
    add_no_progress(p)
    add_task(p)
    add_seed(p)
    add_workers(p)
    add_device(p)
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from shiftkit.transfer.pipeline import TransferConfig, run_transfer

    cfg = TransferConfig(
        source=args.source, target=args.target, out=args.out, method=args.method, beta=args.beta,
        reference=args.reference, pair=args.pair, pair_k=args.pair_k, mix=args.mix, suffix=args.suffix,
        seed=args.seed, batch_size=args.batch_size, workers=args.workers, device=args.device, task=args.task,
        max_targets=args.max_targets, figures=args.figures, gap=not args.no_gap, gap_max=args.gap_max,
        on_error="raise" if args.on_bad == "fail" else "skip", progress=not (args.no_progress or args.json), finalize=args.finalize, overwrite=args.overwrite,
        translator=args.translator,
    )
    res = run_transfer(cfg)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 1 if res.get("errors") else 0
    if "note" in res:
        print(res["note"])
        return 0
    print(f"{cfg.method}: wrote {res.get('written', 0)} images ({res.get('skipped_done', 0)} already done, "
          f"{res.get('errors', 0)} unreadable) in {res['wall_s']:.1f} s -> {cfg.out}")
    gap = res.get("gap")
    if gap and "before" in gap:
        b, a = gap["before"], gap["after"]
        key = "properties" if "properties" in b else next(iter(b))
        extra = ", ".join(f"{k}: {b[k]:.3f} -> {a[k]:.3f}" for k in b if k != key)
        print(f"gap A vs B: {b[key]:.3f} -> A' vs B: {a[key]:.3f}  (domain-classifier accuracy on {key}, 0.5 = same; {extra})")
        worst = sorted(gap["ks_before"].items(), key=lambda kv: -kv[1])[:4]
        print("KS drift: " + ", ".join(f"{k} {v:.2f} -> {gap['ks_after'].get(k, float('nan')):.2f}" for k, v in worst))
    elif gap:
        print(f"gap score skipped: {gap.get('skipped')}")
    if res.get("grid"):
        print(f"grid: {res['grid']}")
    print(f"pairs: {res['pairs_csv']}  report: {cfg.figures / 'transfer.json'}")
    if res.get("errors"):
        print(f"{res['errors']} source images could not be read; first: {res['error_messages'][0]}", file=sys.stderr)
        return 1
    return 0
