"""T1 `transfer-speed` (BENCHMARKS.md): shiftkit's transfer against albumentations, and against the I/O limit.

1. In one process, on the same images and the same (source, target) pairs: shiftkit's FDA and
   histogram matching (batched tensors) against albumentations' `FDA` and `HistogramMatching`
   applied per image. Timings include the uint8 <-> tensor conversions on shiftkit's side.
2. The CLI end to end (`python -m shiftkit transfer ...`, a subprocess) against a bare
   decode + encode loop over the same PNG files (also a subprocess): the I/O limit.
3. Peak RSS of the CLI when the input grows 10x (children's ru_maxrss from os.wait4).

Images: 256x256; half ELPV solar cells (300x300 gray, resized), half RGB crops of the photos
bundled with scikit-image. Nothing is downloaded and no image is written inside the repository
(the work folder defaults to runs/, which git ignores).

    python benchmarks/transfer_speed.py                 # the T1 setting: 2,000 images, 3 repeats
    python benchmarks/transfer_speed.py --n 200 --repeats 1 --quick    # smoke run

albumentations is imported only here (pip install albumentations); never from src/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SIZE = 256
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "cat", "colorwheel")


# ------------------------------------------------------------------------------------ images
def elpv_cells(n: int, offset: int = 0) -> list[np.ndarray]:
    """n ELPV cells (uint8 256x256x1) decoded with shiftkit's reader and resized with PIL bilinear."""
    from PIL import Image

    from shiftkit.data.images import read_image

    try:
        from shiftkit.data.builders.sources import load_elpv

        table = load_elpv()
        paths = [table.root / p for p in table.paths]
    except ImportError:  # builders not present: read the package's files directly
        import elpv_dataset

        root = Path(elpv_dataset.__file__).parent / "data"
        paths = [root / line.split()[0] for line in (root / "labels.csv").read_text().splitlines() if line.strip()]
    out = []
    for k in range(n):
        img, _ = read_image(paths[(offset + k) % len(paths)])
        out.append(np.array(Image.fromarray(img[:, :, 0]).resize((SIZE, SIZE), Image.BILINEAR))[:, :, None])
    return out


def photo_crops(n: int, seed: int) -> list[np.ndarray]:
    """n random 256x256 RGB crops of scikit-image's bundled photos (seeded)."""
    import skimage.data as data

    photos = []
    for name in PHOTOS:
        img = getattr(data, name)()
        img = img[:, :, :3] if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
        if min(img.shape[:2]) >= SIZE:
            photos.append(np.ascontiguousarray(img))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        p = photos[k % len(photos)]
        y = int(rng.integers(0, p.shape[0] - SIZE + 1))
        x = int(rng.integers(0, p.shape[1] - SIZE + 1))
        out.append(p[y : y + SIZE, x : x + SIZE].copy())
    return out


def image_set(n: int, seed: int, offset: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(gray ELPV cells, RGB photo crops), n // 2 each (the gray half gets the odd one)."""
    n_rgb = n // 2
    return elpv_cells(n - n_rgb, offset), photo_crops(n_rgb, seed + offset)


# ------------------------------------------------------------------------------------ timing helpers
def median(xs):
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def summary(values, digits=4):
    return {"median": round(median(values), digits), "values": [round(float(v), digits) for v in values]}


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------ 1. in process
def in_process(groups, target_groups, beta: float, batch: int, repeats: int, threads: int, seed: int) -> list[dict]:
    """Two pairings of the same source images, each timed for both libraries on the same pairs:
    `a2b`, the transfer setting (and the CLI's): every source styled by a random image of a separate
    target set B (here 200 images, as in the CLI runs), so a target styles about 10 sources;
    `distinct`, the worst case for shiftkit: every source styled by its own target image.
    albumentations' API takes the reference image per call and recomputes its statistics every
    time; shiftkit is told which target each source got (`target_keys`) and computes a target's
    statistics once per run (a fresh method object per timed run: nothing carries over)."""
    import albumentations as A
    import torch

    from shiftkit.transfer.methods import FDA, HistogramMatching

    torch.set_num_threads(threads)
    try:  # albumentations and shiftkit's optional kernels both use OpenCV: same thread count as torch
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    pairings = {"a2b": [], "distinct": []}  # per group: (sources, targets, target keys)
    for g, (imgs, timgs) in enumerate(zip(groups, target_groups, strict=True)):
        pick = rng.integers(0, len(timgs), len(imgs))
        pairings["a2b"].append((imgs, [timgs[j] for j in pick], [(g, int(j)) for j in pick]))
        perm = rng.permutation(len(imgs))
        pairings["distinct"].append((imgs, [imgs[j] for j in perm], None))
    n = sum(len(s) for s in groups)

    a_fda = A.FDA(beta_limit=(beta, beta), p=1.0, metadata_key="fda_metadata")
    a_hist = A.HistogramMatching(blend_ratio=(1.0, 1.0), p=1.0, metadata_key="hm_metadata")

    def albu(pairs, t, key):
        def go(limit=None):
            for src, tgt, _ in pairs:
                for s_, t_ in list(zip(src, tgt, strict=True))[:limit]:
                    out = t(image=s_, **{key: [t_]})["image"]
            return out
        return go

    def ours(pairs, make):
        def go(limit=None):
            method = make()  # fresh per run: no target statistics carried over between repeats
            for src, tgt, keys in pairs:
                for k in range(0, len(src) if limit is None else min(limit, len(src)), batch):
                    x = torch.from_numpy(np.stack(src[k : k + batch])).permute(0, 3, 1, 2)
                    ts = [torch.from_numpy(t).permute(2, 0, 1) for t in tgt[k : k + batch]]
                    y = method.apply_uint8(x, targets=ts, target_keys=None if keys is None else keys[k : k + batch])
                    y = y.permute(0, 2, 3, 1).numpy()
            return y
        return go

    def without_opencv(fn):  # shiftkit's fallback kernels (torch bincount, numpy take)
        def go(limit=None):
            os.environ["SHIFTKIT_NO_OPENCV"] = "1"
            try:
                return fn(limit)
            finally:
                os.environ.pop("SHIFTKIT_NO_OPENCV")
        return go

    rows = []
    for pairing, pairs in pairings.items():
        runs = {}
        order = [("albumentations-FDA", albu(pairs, a_fda, "fda_metadata")), ("shiftkit-fda", ours(pairs, lambda: FDA(beta))),
                 ("albumentations-HistogramMatching", albu(pairs, a_hist, "hm_metadata")),
                 ("shiftkit-histogram", ours(pairs, lambda: HistogramMatching("image"))),
                 ("shiftkit-histogram (without OpenCV)", without_opencv(ours(pairs, lambda: HistogramMatching("image"))))]
        for name, fn in order:
            fn(limit=batch)  # warm-up on one batch per group (imports, allocator, FFT plans)
            runs[name] = [n / t for t in timed(fn, repeats)]
            print(f"  [{pairing:8s}] {name:38s} {median(runs[name]):8.1f} images/s", file=sys.stderr)
        for name, ips in runs.items():
            base = "albumentations-FDA" if "fda" in name.lower() else "albumentations-HistogramMatching"
            metrics = {"images_per_s": summary(ips, 2)}
            if name.startswith("shiftkit"):
                metrics["speedup_vs_albumentations"] = summary([a / b for a, b in zip(ips, runs[base], strict=True)], 3)
            rows.append({"method": f"{name} [{pairing}]", "pairing": pairing, "uses_target_labels": False, "metrics": metrics,
                         "wall_s": summary([n / v for v in ips], 3), "images": n,
                         "target_images": sum(len(t) for t in target_groups) if pairing == "a2b" else n, "torch_threads": threads})
    return rows


# ------------------------------------------------------------------------------------ 2. end to end
def write_pngs(folder: Path, groups, classes=("elpv", "photo")) -> None:
    from shiftkit.data.images import encode_image

    for cls, imgs in zip(classes, groups, strict=True):
        d = folder / cls if classes else folder
        d.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(imgs):
            (d / f"{cls}{k:05d}.png").write_bytes(encode_image(img, ".png"))


BARE = r"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from shiftkit.data.images import read_image, encode_image
src, out = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in src.rglob("*.png"))
for p in files:
    img, meta = read_image(p)
    dst = out / p.relative_to(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(encode_image(img, ".png", meta))
print(len(files))
"""


RSS_WRAPPER = r"""
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
# VmHWM (this process's own peak) resets at exec; ru_maxrss would carry the launching parent's size.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # DataLoader workers, if any
print(f"PEAK_RSS_KB {hwm} CHILDREN_KB {c}", file=sys.stderr)
sys.exit(code)
"""


def run_cli(src: Path, tgt: Path, out: Path, method: str, env: dict, extra: list[str]) -> tuple[float, float, dict]:
    """The CLI as a user runs it, wrapped only to read its own peak RSS at exit."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / (out.name + ".figures"), ignore_errors=True)
    cmd = [sys.executable, "-c", RSS_WRAPPER, "shiftkit", "transfer", "--source", str(src), "--target", str(tgt),
           "--out", str(out), "--method", method, "--no-gap", "--no-progress", "--device", "cpu", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"shiftkit transfer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return wall, rss / 1024.0, json.loads(proc.stdout)


def run_bare(src: Path, out: Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BARE, str(src), str(out), str(ROOT / "src")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bare loop failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def end_to_end(work: Path, n: int, repeats: int, methods: list[str], env: dict, extra: list[str], workers: list[int]) -> list[dict]:
    src, tgt = work / "source", work / "target"
    rows = []
    bare = [n / run_bare(src, work / "bare_out", env) for _ in range(repeats)]
    print(f"  {'decode+encode loop':34s} {median(bare):8.1f} images/s", file=sys.stderr)
    rows.append({"method": "decode+encode (I/O limit)", "uses_target_labels": False,
                 "metrics": {"images_per_s": summary(bare, 2)}, "wall_s": summary([n / v for v in bare], 3), "images": n})
    serial = dict(env, SHIFTKIT_ENCODE_THREADS="0")  # everything in one thread, like the bare loop
    runs = [(m, nw, env, "") for nw in workers for m in methods] + [(m, 0, serial, ", serial: no encode thread") for m in methods]
    for m, nw, run_env, label in runs:
        ips, rss, inner = [], [], []
        for _ in range(repeats):
            wall, peak, res = run_cli(src, tgt, work / f"out_{m}", m, run_env, [*extra, "--workers", str(nw)])
            ips.append(n / wall)
            rss.append(peak)
            inner.append(res.get("transfer_s", float("nan")))
        frac = [a / b for a, b in zip(ips, bare, strict=True)]
        name = f"cli {m} --workers {nw}{label}"
        print(f"  {name:34s} {median(ips):8.1f} images/s ({median(frac):.0%} of the I/O limit)", file=sys.stderr)
        rows.append({"method": name, "uses_target_labels": False,
                     "metrics": {"images_per_s": summary(ips, 2), "fraction_of_io_limit": summary(frac, 3), "peak_rss_mb": summary(rss, 1)},
                     "wall_s": summary([n / v for v in ips], 3), "transfer_loop_s": summary(inner, 3), "images": n,
                     "cli_args": ["--method", m, *extra, "--workers", str(nw)]})
    return rows


def memory_growth(work: Path, n: int, repeats: int, env: dict, extra: list[str], method: str) -> list[dict]:
    """Peak RSS for n/10 and n source images (same target set)."""
    small = work / "source_small"
    if not small.exists():
        for cls_dir in (work / "source").iterdir():
            files = sorted(cls_dir.iterdir())
            (small / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for f in files[: max(1, len(files) // 10)]:
                shutil.copy(f, small / cls_dir.name / f.name)
    peaks = {}
    for name, src in (("1x", small), ("10x", work / "source")):
        peaks[name] = [run_cli(src, work / "target", work / f"mem_{name}", method, env, extra)[1] for _ in range(repeats)]
        print(f"  peak RSS {name:4s} {median(peaks[name]):8.1f} MiB", file=sys.stderr)
    ratio = [b / a for a, b in zip(peaks["1x"], peaks["10x"], strict=True)]
    n_small = sum(1 for _ in small.rglob("*.png"))
    return [{"method": f"cli {method} peak memory", "uses_target_labels": False, "images": {"1x": n_small, "10x": n},
             "metrics": {"peak_rss_mb_1x": summary(peaks["1x"], 1), "peak_rss_mb_10x": summary(peaks["10x"], 1),
                         "peak_rss_ratio_10x_over_1x": summary(ratio, 3)}}]


# ------------------------------------------------------------------------------------ main
def _encode_threads(env: dict) -> int:
    """The CLI's encoding threads (beside its main loop) in the benchmark's environment."""
    code = "from shiftkit.transfer.pipeline import encode_threads; print(encode_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout)


def versions() -> dict:
    import albumentations
    import kornia
    import torch

    import shiftkit

    try:
        import cv2

        opencv = cv2.__version__
    except ImportError:
        opencv = None
    return {"shiftkit": shiftkit.__version__, "torch": torch.__version__, "kornia": kornia.__version__, "opencv": opencv,
            "numpy": np.__version__, "albumentations": albumentations.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    ap.add_argument("--n-targets", type=int, default=200, help="target images for the CLI runs (default 200)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per measurement (default 3; medians reported)")
    ap.add_argument("--beta", type=float, default=0.01, help="FDA window (default 0.01)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in process and OMP_NUM_THREADS of the CLI (default 1: the cores are shared)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "transfer_speed"), help="scratch folder for the PNG sets (git-ignored runs/)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["inprocess", "e2e", "memory"],
                    help="parts not to run; their rows are kept from the existing results file")
    ap.add_argument("--workers", nargs="*", type=int, default=[0, 2], help="--workers values for the CLI runs (default 0 2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer_speed.json"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    groups = image_set(args.n, args.seed)
    target_groups = image_set(args.n_targets, args.seed + 1, offset=args.n)  # B: the CLI runs' target set too
    rows: list[dict] = []
    previous, carried = [], None  # rows of skipped parts are kept from the last results file
    if args.skip and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        previous = [r for r in old.get("rows", []) if r.get("part") in args.skip]
        if previous:
            carried = {"parts": sorted({r["part"] for r in previous}), "command": old.get("command"), "date": old.get("date")}
    if "inprocess" not in args.skip:
        print("in process (same images, same pairs):", file=sys.stderr)
        rows += [dict(r, part="inprocess") for r in in_process(groups, target_groups, args.beta, args.batch_size, args.repeats, args.threads, args.seed)]
    work = Path(args.work)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT / "src"))
    extra = ["--beta", str(args.beta), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if "e2e" not in args.skip or "memory" not in args.skip:
        shutil.rmtree(work, ignore_errors=True)
        write_pngs(work / "source", groups)
        write_pngs(work / "target", target_groups)
    del groups, target_groups
    if "e2e" not in args.skip:
        print("end to end (subprocesses, PNG files):", file=sys.stderr)
        rows += [dict(r, part="e2e") for r in end_to_end(work, args.n, args.repeats, ["fda", "histogram"], env, extra, args.workers)]
    if "memory" not in args.skip:
        print("peak memory, input grown 10x:", file=sys.stderr)
        rows += [dict(r, part="memory") for r in memory_growth(work, args.n, args.repeats, env, extra, "fda")]
    order = {"inprocess": 0, "e2e": 1, "memory": 2}
    rows = sorted(previous + rows, key=lambda r: order.get(r.get("part"), 3))

    result = {
        "benchmark": "transfer-speed",
        "command": "python benchmarks/transfer_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}; load average at the end {os.getloadavg()[0]:.1f}",
        "versions": versions(),
        "seeds": [args.seed],
        "settings": {"images": args.n, "size": SIZE, "targets_cli": args.n_targets, "beta": args.beta, "batch_size": args.batch_size,
                     "repeats": args.repeats, "torch_threads": args.threads,
                     "images_from": "half ELPV cells (elpv-dataset, 300x300 gray resized to 256), half 256x256 RGB crops of scikit-image's bundled photos"},
        "rows": rows,
        "encode_threads_cli": _encode_threads(env),
        "anchors": {"albumentations": "FDA and HistogramMatching (p=1, FDA beta_limit=(beta, beta), HistogramMatching blend_ratio=(1, 1)) applied per image, same process, same pairs"},
        "pairings": {"a2b": "each source styled by a random image of the separate target set (n_targets images; the CLI's setting)",
                     "distinct": "each source styled by its own image of the source set (worst case: no target is seen twice)"},
        "goal": {"speedup_vs_albumentations": {"at_least": 3.0}, "fraction_of_io_limit": {"at_least": 0.7},
                 "peak_rss_ratio_10x_over_1x": {"at_most": 1.2}},
        "total_wall_s": round(time.perf_counter() - t_start, 1),
    }
    if carried:
        result["carried_over"] = carried
    from shiftkit.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out} in {result['total_wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
