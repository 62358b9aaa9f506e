"""Issue 3's gap check on B2 `elpv-mono2poly`: does each training-free method bring A' closer to B than A was?

For every method, `shiftkit transfer` (the Python API the CLI calls) writes A' = source (mono cells)
styled by the unlabeled target-train set (poly cells), then scores the gap: a cross-validated
domain classifier on image properties, and on pretrained-free features, tells A from B and A'
from B (accuracy; 0.5 = indistinguishable), plus the KS statistic per image property. Lower
after than before means A' looks more like B. Seeds change the target chosen per source and the
scored subsets; medians over seeds are reported. No label of any set is used.

    python benchmarks/transfer_gap.py                        # 5 methods x 3 seeds, 300 images per set
    python benchmarks/transfer_gap.py --seeds 0 --methods fda histogram   # quick look
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

BENCH = "transfer-gap"
METHODS = {  # row name -> TransferConfig options
    "fda": {"method": "fda", "beta": 0.01},
    "histogram (paired image)": {"method": "histogram"},
    "histogram (target-set mean)": {"method": "histogram", "reference": "set"},
    "color-stats": {"method": "color-stats"},
    "pca": {"method": "pca"},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"rows to run (default all: {', '.join(METHODS)})")
    ap.add_argument("--gap-max", type=int, default=300, help="images per set for the gap score (default 300)")
    ap.add_argument("--data", default=None, help="elpv-mono2poly folder (default runs/data/elpv-mono2poly, built if missing)")
    ap.add_argument("--work", default=str(C.ROOT.parent / "runs" / "transfer_gap"), help="where A' is written (git-ignored)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--result", default=None)
    args = ap.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(METHODS)}")

    from shiftkit.transfer.pipeline import TransferConfig, run_transfer

    data = C.prepare_data("elpv-mono2poly", args.data)
    work = Path(args.work)
    rows = []
    for name in args.methods:
        row = C.Row(name, uses_target_labels=False)
        for seed in args.seeds:
            out = work / f"{name.split()[0]}_{METHODS[name].get('reference', 'image')}_s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            with C.Timer() as t:
                res = run_transfer(TransferConfig(source=data / "source", target=data / "target", out=out, seed=seed,
                                                  gap=True, gap_max=args.gap_max, device=args.device, progress=False,
                                                  figures=work / f"{out.name}.figures", **METHODS[name]))
            gap = res["gap"]
            metrics = {}
            for key in gap["before"]:
                metrics[f"gap_{key}_before"] = gap["before"][key]
                metrics[f"gap_{key}_after"] = gap["after"][key]
            for prop in gap["ks_before"]:
                metrics[f"ks_{prop}_before"] = gap["ks_before"][prop]
                metrics[f"ks_{prop}_after"] = gap["ks_after"].get(prop, float("nan"))
            row.add(metrics, t.wall, t.cpu)
            shown = ", ".join(f"{k}: {gap['before'][k]:.3f} -> {gap['after'][k]:.3f}" for k in gap["before"])
            print(f"{name:30s} seed {seed}: gap {shown} ({t.wall:.0f} s)", file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)  # ELPV-derived images stay out of the results
        rows.append(row)

    keys = sorted({k[len("gap_"):-len("_before")] for r in rows for k in r.metrics if k.startswith("gap_") and k.endswith("_before")})
    verdict = {}
    for k in keys:
        lower = [r.method for r in rows
                 if C.median_block(r.metrics[f"gap_{k}_after"])["median"] < C.median_block(r.metrics[f"gap_{k}_before"])["median"]]
        verdict[f"methods_lowering_gap_{k}"] = lower
    verdict["goal_met"] = any(verdict.values())
    print(C.table(rows, [f"gap_{k}_{w}" for k in keys for w in ("before", "after")]), file=sys.stderr)
    res = C.result(BENCH, args.seeds, rows,
                   anchors={"meaning": "domain-classifier accuracy (cross-validated), A vs B and A' vs B; 0.5 = indistinguishable"},
                   goal={"gap_after_below_before": "for at least one method (issue 3)"},
                   settings={"data": str(data), "gap_max": args.gap_max, "methods": {m: METHODS[m] for m in args.methods},
                             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                   verdict=verdict)
    print(f"wrote {C.write_result(res, args.result)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
