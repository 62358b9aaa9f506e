"""CPU inference in cache-sized chunks (`shiftkit.device.forward_chunked`) against one large batch.

Every inference pass of shiftkit (evaluate, predict, the engine's per-epoch scores, frozen-backbone
feature caching, pseudo labels, flip TTA) used to push a whole loader batch (64 or 128 images) through
the model at once. On CPU that is slow: the activations of a large batch do not stay in cache. shiftkit
now splits each batch into chunks of about `CPU_CHUNK_PIXELS` input pixels; on CUDA nothing changes.

Part 1, the forward alone: per model and input size, the same random images through the same eval-mode
model, in 128-image batches (before) and chunked (now), interleaved, repeated; the ratio is taken per
repeat, side by side, and its median reported. The outputs must agree (max absolute difference printed).

Part 2, end to end: `shiftkit.train.evaluation.run_model` (what `shiftkit evaluate` and `predict` run)
over the B1 validation half, 1,112 ELPV cells read from PNG at 160 px, with an ImageNet MobileNetV2
classifier, unchunked (SHIFTKIT_CPU_CHUNK_PIXELS set above a whole batch) against the default.

    python benchmarks/inference_chunks.py
    python benchmarks/inference_chunks.py --repeats 3 --skip-end-to-end
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

BENCH = "inference-chunks"
# (row name, model spec, input side, images per measurement)
CASES = [
    ("mobilenet_v2 classifier", {"arch": "classifier", "backbone": {"name": "mobilenet_v2"}, "num_classes": 2}, 160, 256),
    ("mobilenet_v2 classifier", {"arch": "classifier", "backbone": {"name": "mobilenet_v2"}, "num_classes": 2}, 300, 128),
    ("deeplabv2 (mobilenet_v2, stride 8)", {"arch": "deeplabv2", "num_classes": 11}, 160, 128),
    ("unet base 8 (B5)", {"arch": "unet", "num_classes": 11, "base": 8}, 32, 512),
    ("unet base 8", {"arch": "unet", "num_classes": 11, "base": 8}, 128, 256),
]
BEFORE_BATCH = 128  # the engine's eval_batch_size and predict_probs' batch before chunking


def forward_rows(repeats: int) -> list[C.Row]:
    import torch

    from shiftkit.device import forward_chunked
    from shiftkit.models import build_model

    rows = []
    for name, spec, side, n in CASES:
        torch.manual_seed(0)
        model = build_model(spec).eval()
        x = torch.rand(n, 3, side, side)

        def whole(v, model=model):
            return [model(v[i:i + BEFORE_BATCH]) for i in range(0, len(v), BEFORE_BATCH)]

        row = C.Row(f"{name} @ {side} px", False, notes=f"{n} images; before: batches of {BEFORE_BATCH}")
        with torch.no_grad():
            ref = whole(x)
            got = forward_chunked(model, x)
            ref_t = torch.cat([r if torch.is_tensor(r) else r[-1] for r in ref])
            got_t = got if torch.is_tensor(got) else got[-1]
            diff = float((ref_t - got_t).abs().max())
            for _ in range(repeats):
                with C.Timer() as tb:
                    whole(x)
                with C.Timer() as tc:
                    forward_chunked(model, x)
                row.add({"ms_per_image_before": tb.wall / n * 1000, "ms_per_image_chunked": tc.wall / n * 1000,
                         "speedup": tb.wall / tc.wall}, tb.wall + tc.wall)
        row.extra["max_abs_diff"] = diff
        rows.append(row)
        m = row.metrics
        print(f"{row.method:<48} before {statistics.median(m['ms_per_image_before']):7.2f} ms/img  chunked "
              f"{statistics.median(m['ms_per_image_chunked']):7.2f} ms/img  speedup {statistics.median(m['speedup']):.2f}x  "
              f"max|diff| {diff:.1e}", flush=True)
    return rows


def end_to_end_row(repeats: int) -> C.Row:
    import torch

    from shiftkit.models import build_model
    from shiftkit.train.evaluation import run_model
    from shiftkit.train.loaders import open_any

    root = C.prepare_data("elpv-defect")
    ds = open_any(root / "val", task="classification")
    model = build_model({"arch": "classifier", "backbone": {"name": "mobilenet_v2"}, "num_classes": 2}, weights="imagenet")
    info = {"input_size": [160, 160], "in_channels": 3}
    row = C.Row("run_model (evaluate/predict) @ 160 px, B1 val", False,
                notes=f"{len(ds)} PNG cells decoded and resized each time; loader batch 64")
    with mock.patch.dict(os.environ):  # the caller's environment comes back as it was
        for _ in range(repeats):
            os.environ["SHIFTKIT_CPU_CHUNK_PIXELS"] = str(10**9)  # one chunk per batch: the old behaviour
            with C.Timer() as tb:
                before = run_model(model, ds, info, device="cpu", progress=False)
            os.environ.pop("SHIFTKIT_CPU_CHUNK_PIXELS")
            with C.Timer() as tc:
                now = run_model(model, ds, info, device="cpu", progress=False)
            row.add({"images_per_s_before": len(ds) / tb.wall, "images_per_s_chunked": len(ds) / tc.wall,
                     "speedup": tb.wall / tc.wall}, tb.wall + tc.wall)
    row.extra["max_abs_diff"] = float(abs(torch.as_tensor(before["probs"]) - torch.as_tensor(now["probs"])).max())
    m = row.metrics
    print(f"{row.method:<48} before {statistics.median(m['images_per_s_before']):6.1f} img/s  chunked "
          f"{statistics.median(m['images_per_s_chunked']):6.1f} img/s  speedup {statistics.median(m['speedup']):.2f}x  "
          f"max|diff| {row.extra['max_abs_diff']:.1e}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved before/chunked measurements per row (default 5)")
    ap.add_argument("--skip-end-to-end", action="store_true", help="only the forward rows (no ELPV data needed)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--result", default=None, help="result JSON (default benchmarks/results/inference_chunks.json)")
    a = ap.parse_args(argv)
    import torch

    from shiftkit.device import CPU_CHUNK_PIXELS

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = forward_rows(a.repeats)
    if not a.skip_end_to_end:
        rows.append(end_to_end_row(a.repeats))
    speedups = {r.method: statistics.median(r.metrics["speedup"]) for r in rows}
    res = C.result(BENCH, [0], rows, anchors={"before": f"one forward per {BEFORE_BATCH}-image batch (64 in run_model)"},
                   goal={"metric": "speedup", "note": "chunked inference is never slower than one batch and gives the same outputs"},
                   settings={"cpu_chunk_pixels": CPU_CHUNK_PIXELS, "repeats": a.repeats, "threads": torch.get_num_threads()},
                   verdict={"median_speedup": speedups, "never_slower": all(v >= 0.95 for v in speedups.values()),
                            "same_outputs": all(r.extra["max_abs_diff"] < 1e-4 for r in rows)})
    print(f"result: {C.write_result(res, a.result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
