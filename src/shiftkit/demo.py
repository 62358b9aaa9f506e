"""`make demo`: the mono -> poly solar-cell shift, end to end, in a few minutes on a laptop CPU.

    python -m shiftkit.demo --out runs/demo

Steps (one that fails is reported in plain words and the others still run):
  1. prepare the `elpv-mono2poly` benchmark into OUT/data (resumes if it is there already);
  2. validate the source (mono, labeled) and target (poly, unlabeled) folders;
  3. measure per-property drift between mono and poly cells, and how well a simple classifier
     tells them apart (0.5 = indistinguishable);
  4. transfer a few mono cells to poly style (FDA and histogram matching), save a before/after
     grid, and measure how much histogram matching closes the most drifted photometric property;
  5. translate: a brief CUT translator (learned unpaired translation, 400 bfloat16 steps at 96 px,
     about a minute) paints poly texture onto the grid's mono cells; its grid and the edge
     alignment of each cell with its translation (1 = the same geometry) are saved;
  6. recolour: the grid's mono cells as `shiftkit train --source-jitter 0.3 --source-invert 0.5` hands
     them to a model at each step (brightness, contrast, sometimes inverted; the labels never move);
  7. adapt: a classifier on frozen ImageNet MobileNetV2 features trained on mono cells only
     (source-only) and with MCC on the unlabeled poly cells, the checkpoint chosen without target
     labels; poly target-test balanced accuracy of both (labels only score).
OUT holds config.json, metrics.json and figures/ (CONVENTIONS.md run folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit import __version__
from shiftkit.common_args import add_device, add_json, add_seed
from shiftkit.data.tensors import images_to_tensor, tensor_to_images
from shiftkit.errors import ShiftkitError
from shiftkit.io import atomic_write_json

BENCHMARK = "elpv-mono2poly"


class Demo:
    def __init__(self, out: Path, seed: int = 0, device: str = "auto", progress: bool = True,
                 limit: int | None = None, grid: int = 6, say: Callable[[str], None] | None = None):
        self.out, self.seed, self.device, self.progress, self.limit, self.grid = out, seed, device, progress, limit, grid
        self.data = out / "data"
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.metrics: dict[str, Any] = {}
        self.steps: dict[str, dict[str, Any]] = {}

    # -- steps ---------------------------------------------------------------------------
    def prepare(self) -> None:
        from shiftkit.data.builders import build

        s = build(BENCHMARK, self.data, seed=self.seed, limit=self.limit, progress=self.progress,
                  log=lambda m: self.say("    " + m))
        sizes = {k: v["count"] for k, v in s["splits"].items()}
        self.metrics["data"] = {"path": str(self.data), "status": s["status"], "sizes": sizes,
                                "classes": {k: v["classes"] for k, v in s["splits"].items()}}
        src = s["splits"]["source"]["classes"]
        self.say(f"    {sizes['source']} mono cells (labeled: {src['functional']} functional, {src['defective']} defective), "
                 f"{sizes['target']} poly cells unlabeled, {sizes['target-test']} poly cells kept for scoring")

    def validate(self) -> None:
        from shiftkit.data.validate import validate

        results = {}
        for split in ("source", "target"):
            report = validate(self.data / split, progress=self.progress)
            counts = report.counts()
            n = report.stats.get("images", 0)
            words = f"{n} images, " + (", ".join(f"{k} x{v}" for k, v in counts.items()) if counts else "no problems")
            results[split] = {"images": n, "ok": report.ok, "problem_counts": counts, "words": words}
            self.say(f"    {split}: {words}")
        self.metrics["validate"] = results

    def drift(self) -> None:
        from shiftkit.analysis import compute_properties, gap_score, property_drift
        from shiftkit.analysis.properties import PHOTOMETRIC_PROPERTIES
        from shiftkit.data import open_dataset

        kw = dict(progress=self.progress, device=self.device, features=True)
        mono = compute_properties(open_dataset(self.data / "source"), desc="properties (mono)", **kw)
        poly = compute_properties(open_dataset(self.data / "target"), desc="properties (poly)", **kw)
        rows = property_drift(mono, poly)
        gap = gap_score(mono, poly, seed=self.seed)
        top = [r for r in rows if r["ks"] > 0][:4]
        for r in top:
            self.say(f"    {r['property']:<13} mono median {r['median_a']:.3g} vs poly {r['median_b']:.3g}  "
                     f"(KS {r['ks']:.2f}, histogram overlap {100 * r['overlap']:.0f}%)")
        for name, g in gap.items():
            self.say(f"    a simple classifier on {name} tells mono from poly with accuracy {g['accuracy']:.2f} (0.5 = no gap)")
        self.metrics["drift"] = {
            "properties": [{k: r[k] for k in ("property", "ks", "overlap", "median_a", "median_b")} for r in rows],
            "gap": {k: {"accuracy": v["accuracy"], "accuracy_std": v["accuracy_std"]} for k, v in gap.items()},
        }
        # the transfer step shows the most drifted property a photometric transfer can move
        self._top_property = next((r["property"] for r in rows if r["ks"] > 0 and r["property"] in PHOTOMETRIC_PROPERTIES), None)

    def transfer(self) -> None:
        from shiftkit.data import open_dataset
        from shiftkit.device import resolve_device
        from shiftkit.report.grid import save_grid
        from shiftkit.transfer.methods import FDA, HistogramMatching

        dev = resolve_device(self.device)
        src, tgt = open_dataset(self.data / "source"), open_dataset(self.data / "target")
        s_samples, t_samples = self._grid_cells(src, tgt)
        n = len(s_samples)
        xs, xt = _batch(s_samples, dev), _batch(t_samples, dev)
        fda = FDA(beta=0.01)(xs, xt)
        hist = HistogramMatching("image")(xs, xt)
        rows = [[_u8(xs[k]), _u8(fda[k]), _u8(hist[k]), _u8(xt[k])] for k in range(n)]
        labels = [f"{Path(s.path).name} -> {Path(t.path).name}" for s, t in zip(s_samples, t_samples, strict=True)]
        path = save_grid(self.out / "figures" / "mono_to_poly.png", rows,
                         titles=["mono (source)", "FDA beta=0.01", "histogram match", "poly reference"],
                         row_labels=labels, cell=160)
        self.say(f"    before/after grid of {n} mono cells: {path}")
        self.metrics["transfer"] = {"grid": path, "methods": ["fda", "histogram"]}
        self._transfer_effect(src, tgt, {"fda": FDA(beta=0.01), "histogram": HistogramMatching("image")}, dev)

    def _grid_cells(self, src, tgt) -> tuple[list, list]:
        """The seeded mono cells (and poly references) every before/after grid shows."""
        rng = np.random.default_rng(self.seed)
        n = min(self.grid, len(src), len(tgt))
        si = sorted(rng.choice(len(src), n, replace=False).tolist())
        ti = sorted(rng.choice(len(tgt), n, replace=False).tolist())
        return [src[i] for i in si], [tgt[i] for i in ti]

    def translate(self) -> None:
        """A brief CUT training (resumed on a rerun), then the grid's mono cells through it."""
        from shiftkit.data import open_dataset
        from shiftkit.device import resolve_device
        from shiftkit.report.grid import save_grid
        from shiftkit.train.translator_loop import TranslatorConfig, load_size_of, train_translator
        from shiftkit.transfer.learned import LearnedTranslation, edge_alignment

        cfg = TranslatorConfig(str(self.data / "source"), str(self.data / "target"), str(self.out / "translator"), size=96,
                               steps=400 if self.limit is None else 4, seed=self.seed, device=self.device, amp="on",
                               channels_last=True, grid_every=0, progress=self.progress)
        m = train_translator(cfg)
        dev = resolve_device(self.device)
        src, tgt = open_dataset(self.data / "source"), open_dataset(self.data / "target")
        s_samples, t_samples = self._grid_cells(src, tgt)
        xs, xt = _batch(s_samples, dev), _batch(t_samples, dev)
        y = LearnedTranslation(cfg.out).apply(xs)
        edges = edge_alignment(xs, y)
        rows = [[_u8(xs[k]), _u8(y[k]), _u8(xt[k])] for k in range(len(s_samples))]
        path = save_grid(self.out / "figures" / "mono_to_poly_cut.png", rows,
                         titles=["mono (source)", f"CUT, {m['steps']} steps", "poly reference"],
                         row_labels=[Path(s.path).name for s in s_samples], cell=160)
        self.say(f"    {m['steps']} CUT steps at {m['size']} px in {m['train_s']:.0f} s ({m['amp'] or 'float32'}); "
                 f"edge alignment mono vs translated {float(edges.mean()):.2f} (1 = same geometry); grid: {path}")
        self.say(f"    a real run: shiftkit translator train --source {cfg.source} --target {cfg.target} --out T --amp on "
                 "(5000 steps at 128 px, about 20 min)")
        self.metrics["translate"] = {"grid": path, "steps": m["steps"], "size": m["size"], "load_size": load_size_of(cfg),
                                     "train_s": m["train_s"], "amp": m["amp"], "edge_alignment": float(edges.mean()),
                                     "run": cfg.out}

    def recolour(self) -> None:
        """Three seeded draws of the training-time source recolouring on the grid's mono cells."""
        import torch

        from shiftkit.augment.functional import random_photometric
        from shiftkit.data import open_dataset
        from shiftkit.report.grid import save_grid

        jitter, invert = 0.3, 0.5
        src, tgt = open_dataset(self.data / "source"), open_dataset(self.data / "target")
        s_samples, _ = self._grid_cells(src, tgt)
        xs = _batch(s_samples, "cpu")
        g = torch.Generator().manual_seed(self.seed)
        draws = [random_photometric(xs, jitter, g, invert=invert) for _ in range(3)]
        rows = [[_u8(xs[k])] + [_u8(d[k]) for d in draws] for k in range(len(s_samples))]
        path = save_grid(self.out / "figures" / "mono_recoloured.png", rows,
                         titles=["mono (source)", "draw 1", "draw 2", "draw 3"],
                         row_labels=[Path(s.path).name for s in s_samples], cell=160)
        self.say(f"    what a model sees with --source-jitter {jitter} --source-invert {invert}: {path}")
        self.say("    its effect is measured on B5, digits moved onto photos: the '(source aug)' rows of "
                 "benchmarks/results/digit_scenes.json")
        self.metrics["recolour"] = {"grid": path, "jitter": jitter, "invert": invert, "draws": len(draws)}

    def _transfer_effect(self, src, tgt, methods: dict, dev) -> None:
        """Per-property KS, mono vs poly, before and after each transfer (each mono cell styled by a random poly cell).

        Reported: the most drifted property and the mean KS over the photometric properties, so a method
        that fixes one statistic while breaking others does not look better than it is.
        """
        from shiftkit.analysis import compute_properties, ks_2samp
        from shiftkit.analysis.properties import PHOTOMETRIC_PROPERTIES
        from shiftkit.data.sample import Sample

        rng = np.random.default_rng(self.seed + 1)
        k = min(128, len(src), len(tgt))
        si = sorted(rng.choice(len(src), k, replace=False).tolist())
        ti = rng.choice(len(tgt), k, replace=False).tolist()
        kw = dict(progress=False, device=self.device)
        t_tab = compute_properties([tgt[i] for i in ti], **kw)
        styled: dict[str, list] = {"none": []}
        styled.update({name: [] for name in methods})
        for lo in range(0, k, 32):
            s_batch = [src[i] for i in si[lo:lo + 32]]
            xs, xt = _batch(s_batch, dev), _batch([tgt[i] for i in ti[lo:lo + 32]], dev)
            styled["none"] += s_batch
            for name, method in methods.items():
                y = method(xs, xt)
                styled[name] += [Sample(_u8(y[j]), s.target, s.path) for j, s in enumerate(s_batch)]
        # gray cells: saturation/colourfulness are 0 everywhere and say nothing
        props = [p for p in PHOTOMETRIC_PROPERTIES if np.isfinite(t_tab[p]).all() and np.ptp(t_tab[p]) > 0]
        top = getattr(self, "_top_property", None) or props[0]
        effect = {}
        for name, samples in styled.items():
            tab = compute_properties(samples, **kw)
            ks = {p: ks_2samp(tab[p], t_tab[p])[0] for p in props}
            effect[name] = {"ks": ks, "mean_ks": float(np.mean(list(ks.values())))}
        words = ", ".join(f"{n} {e['ks'][top]:.2f}" for n, e in effect.items())
        self.say(f"    {top} drift (KS) on {k} mono vs {k} poly cells: {words}")
        words = ", ".join(f"{n} {e['mean_ks']:.2f}" for n, e in effect.items())
        self.say(f"    mean KS over {len(props)} photometric properties: {words}")
        self.metrics["transfer"]["effect"] = {"property": top, "n": k, "pairing": "each mono cell with a random poly cell",
                                              "methods": effect}

    def adapt(self) -> None:
        """Source-only vs MCC on cached frozen features: seconds per epoch on a CPU once extracted."""
        from shiftkit.train import fit

        results = {}
        for method in ("source-only", "mcc"):
            run = self.out / "adapt" / method
            done = run / "metrics.json"
            if done.is_file():  # a rerun of the demo reuses a finished run
                r = json.loads(done.read_text())
            else:
                if run.exists():
                    import shutil

                    shutil.rmtree(run)  # an interrupted run: start it again (the features are cached)
                r = fit(self.data / "source", self.data / "target", target_test=self.data / "target-test", method=method,
                        backbone="mobilenet_v2", size=160, freeze_backbone=True, bottleneck=256, epochs=10,
                        batch_size=min(32, self.limit or 32), lr=1e-3, seed=self.seed, device=self.device, out=run,
                        progress=self.progress)
            sel = r["selected"]
            results[method] = {"balanced_accuracy": sel.get("target_test_balanced_accuracy"),
                               "accuracy": sel.get("target_test_accuracy"), "selected_epoch": r["selected_epoch"],
                               "run": str(run)}
            self.say(f"    {method:<12} poly target-test balanced accuracy {results[method]['balanced_accuracy']:.3f} "
                     f"(accuracy {results[method]['accuracy']:.3f}; epoch chosen without target labels)")
        self.metrics["adapt"] = {"model": "frozen ImageNet MobileNetV2 at 160 px + 256-d bottleneck + linear head",
                                 "methods": results}

    # -- driver --------------------------------------------------------------------------
    STEPS = (
        ("prepare", "Preparing the mono -> poly solar-cell data"),
        ("validate", "Checking the source and target folders"),
        ("drift", "Measuring what differs between mono and poly cells"),
        ("transfer", "Transferring mono cells to poly style"),
        ("translate", "Learning a mono -> poly translator (brief CUT run)"),
        ("recolour", "Showing the training-time source recolouring"),
        ("adapt", "Training on mono cells and adapting to unlabeled poly cells"),
    )

    # what a demo run writes under OUT (removed by --overwrite)
    OUTPUTS = ("data", "adapt", "translator", "figures", "config.json", "metrics.json")

    def check_out(self, overwrite: bool = False) -> None:
        """A rerun resumes only the run it started: another --seed or --limit in the same OUT is refused
        (its data, runs and figures belong to the first), or with `overwrite` that run is removed."""
        if overwrite:
            import shutil

            for name in self.OUTPUTS:
                p = self.out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            return
        old = self.out / "config.json"
        if old.is_file():
            prev = json.loads(old.read_text())
            if (prev.get("seed"), prev.get("limit")) != (self.seed, self.limit):
                was = f"--seed {prev.get('seed')}" + (f" --limit {prev['limit']}" if prev.get("limit") is not None else "")
                raise ShiftkitError(f"this folder holds a demo run made with {was}", self.out,
                                    "rerun with those options to resume it, add --overwrite to start it again, "
                                    "or choose another --out")

    def run(self, overwrite: bool = False) -> int:
        self.check_out(overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        config = {"command": "python -m shiftkit.demo", "out": str(self.out), "seed": self.seed, "device": self.device,
                  "limit": self.limit, "grid": self.grid, "benchmark": BENCHMARK,
                  "versions": _versions(), "machine": platform.platform()}
        atomic_write_json(self.out / "config.json", config)
        failed = 0
        for i, (name, words) in enumerate(self.STEPS, 1):
            self.say(f"[{i}/{len(self.STEPS)}] {words} ...")
            t0 = time.perf_counter()
            try:
                getattr(self, name)()
                status, why = "ok", None
            except ShiftkitError as exc:
                status, why = "failed", str(exc)
                if name == "prepare":  # nothing else can run without the data
                    self.steps[name] = {"status": status, "error": why}
                    raise
            except Exception as exc:  # a bug in a step: say which, keep the rest of the demo going
                status, why = "failed", f"{type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            took = time.perf_counter() - t0
            self.steps[name] = {"status": status, "seconds": round(took, 1)} | ({"error": why} if why else {})
            if status != "ok":
                failed += 1
                self.say(f"    step {name} {status}: {why}")
            else:
                self.say(f"    done in {took:.0f} s")
        self.metrics["steps"] = self.steps
        atomic_write_json(self.out / "metrics.json", self.metrics)
        return 1 if failed else 0


def _batch(samples, dev):
    return images_to_tensor([s.image for s in samples], dev)  # all cells are 300x300x1


def _u8(x) -> np.ndarray:
    """One (C, H, W) float image in [0, 1] -> uint8 HxWxC."""
    return tensor_to_images(x[None])[0]


def _versions() -> dict:
    import torch

    return {"shiftkit": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shiftkit.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m shiftkit.demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo); data goes to OUT/data")
    add_seed(p)
    add_device(p)
    add_json(p)
    p.add_argument("--limit", type=int, default=None, help="at most N images per split (a quick trial)")
    p.add_argument("--grid", type=int, default=6, help="mono cells shown in the before/after grid (default 6)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="remove an earlier demo run in --out (its data, runs, figures) and start again")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.limit is not None and args.limit < 8:
            raise ShiftkitError(f"--limit must be >= 8 (drift needs a few images per side), got {args.limit}")
        if args.grid < 1:
            raise ShiftkitError(f"--grid must be >= 1, got {args.grid}")
        demo = Demo(Path(args.out), args.seed, args.device, not args.no_progress, args.limit, args.grid)
        rc = demo.run(args.overwrite)
    except ShiftkitError as exc:
        print(f"shiftkit demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftkit demo: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    took = time.perf_counter() - t0
    if args.json:
        print(json.dumps(demo.metrics, indent=2, default=str))
    else:
        _print_summary(demo, took)
    return rc


def _print_summary(demo: Demo, took: float) -> None:
    m = demo.metrics
    print(f"\nshiftkit demo finished in {took:.0f} s")
    if "data" in m:
        print(f"  data:      {m['data']['path']}  ({', '.join(f'{k} {v}' for k, v in m['data']['sizes'].items())})")
    if "validate" in m:
        print("  validate:  " + "; ".join(f"{k}: {v['words']}" for k, v in m["validate"].items()))
    if "drift" in m:
        top = m["drift"]["properties"][:3]
        print("  drift:     " + ", ".join(f"{r['property']} KS {r['ks']:.2f}" for r in top))
        for name, g in m["drift"]["gap"].items():
            print(f"  gap:       mono vs poly separable on {name} with accuracy {g['accuracy']:.2f} (0.5 = no gap)")
    if "transfer" in m:
        t = m["transfer"]
        if "effect" in t:
            e = t["effect"]
            words = ", ".join(f"{n} {v['ks'][e['property']]:.2f}" for n, v in e["methods"].items())
            print(f"  transfer:  {e['property']} KS mono vs poly: {words}")
            words = ", ".join(f"{n} {v['mean_ks']:.2f}" for n, v in e["methods"].items())
            print(f"             mean KS over pixel properties: {words}")
        print(f"  figure:    {t['grid']}")
    if "translate" in m:
        t = m["translate"]
        print(f"  translate: {t['steps']} CUT steps in {t['train_s']:.0f} s, edge alignment {t['edge_alignment']:.2f}; figure {t['grid']}")
    if "adapt" in m:
        words = ", ".join(f"{k} {v['balanced_accuracy']:.3f}" for k, v in m["adapt"]["methods"].items())
        print(f"  adapt:     poly target-test balanced accuracy: {words}")
    bad = {k: v for k, v in demo.steps.items() if v["status"] != "ok"}
    for k, v in bad.items():
        print(f"  step {k} {v['status']}: {v.get('error')}")
    print(f"  run folder: {demo.out}  (config.json, metrics.json, figures/)")


if __name__ == "__main__":
    sys.exit(main())
