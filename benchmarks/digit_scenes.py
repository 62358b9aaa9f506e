"""B5 digit-scenes: segmentation UDA from clean digit canvases to MNIST-M-style digits on real photos.

Data: `shiftkit data prepare digit-scenes` (built here when missing): source 6000 clean canvases
(MNIST train digits), target-train 3000 (MNIST validation digits on target-train photos; its masks
are read only by the oracle row), target-test 1000 (MNIST test digits, other photos; scoring only).
Canvases are 64x64, resized here to --size (default 32: digits 12-18 px) so that the whole
benchmark fits the 60-minute CPU budget; model: a small U-Net (base width --base 8, depth 3, an
auxiliary 1x1 classifier on the bottleneck = the second output level), trained from scratch, every
row 2000 Adam steps (lr 2e-3, poly decay) of 16 source (+ 16 target) images, pixel CE weighted by
1/sqrt(class pixel share). The recipe was picked on held-out source canvases: with the former 250-600
steps of 32 images at lr 5e-3 even the oracle had not left "all background" (mIoU = background IoU / 11).

Rows: source-only, adaptseg (multi-level), adaptseg-single, minent, advent, advent-ensemble (mean
probabilities of the minent and advent models of the same seed), fda-st, dacs (ClassMix onto target
images labelled by an EMA teacher, the paper's settings), oracle (target-train labels). Metric: mIoU over the 11 classes on target-test, after the last step (no selection on
test labels). Every method runs the same steps, batch, optimiser and schedule; each is a
`shiftkit.adapt` Method driven phase by phase exactly as the engine drives it (zero grads, backward
the phase's summed losses, step the phase's parameter groups).

    python benchmarks/digit_scenes.py --seeds 0 1 2            # the full benchmark
    python benchmarks/digit_scenes.py --seeds 0 --steps 100    # a reduced run (marked as such)
    python benchmarks/digit_scenes.py --seeds 0 1 2 --methods source-only adaptseg advent dacs oracle \
        --source-aug 0.3 0.5 --out runs/bench/digit_scenes_aug  # rows "(source aug)": labelled images recoloured, inverted

The source-free rows (das3 from the source-only models saved here, no source data; ablation per stage) come from
benchmarks/digit_scenes_sourcefree.py, which reuses this file's data loading and scoring and adds its rows to the result.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, Row, Timer, dump, prepare_data, result, table, write_result  # noqa: E402

from shiftkit.adapt.base import StepInfo  # noqa: E402
from shiftkit.adapt.seg_base import build_seg_method  # noqa: E402
from shiftkit.augment.functional import random_photometric  # noqa: E402
from shiftkit.train.seg_metrics import SegMeter  # noqa: E402

NAME = "digit-scenes"
ROOT = Path(__file__).resolve().parent
CACHE = ROOT.parent / "runs" / "cache"
METHODS = ["source-only", "adaptseg", "adaptseg-single", "minent", "advent", "fda-st", "dacs", "oracle"]

# Per-method settings: the papers' loss weights were set for DeepLab-v2 on 1024x512 frames with SGD at
# lr 2.5e-4 and 100k+ steps; here a from-scratch U-Net runs a few thousand Adam steps, so the adaptation
# weights are scaled up once, a priori (x10 adversarial, x100 entropy; never tuned on target labels). The
# entropy weight was checked against x10 on unlabelled target-train only (predicted class shares vs the
# source's, mean entropy; `target_train_stats` below): at x10 the predictions spread over most pixels.
# FDA's beta is a fraction of the image side: at 32 px the paper's 0.01 gives b = floor(32 * 0.01) = 0, i.e.
# only the mean colour is swapped, so the paper's largest value, 0.09 (b = 2), is used. FDA's robust entropy
# keeps x10 (0.05): x100 (0.5) collapsed the target predictions onto one digit class (label-free statistics).
# Its self-training CE is unweighted, as in the paper (class-wise thresholds already balance the classes).
# Its pseudo labels are capped by the source masks' class shares (st_prior "source", not in the paper): with the
# plain rule the FDA-trained model's texture-as-digit predictions were locked in (B5 target-test 0.052 < source-only
# 0.067, half the target pixels labelled digit). Chosen on target-TRAIN masks (validation; target-test not read):
# seeds 0-2 plain 0.134 / 0.149 / 0.157, capped 0.154 / 0.158 / 0.147; background IoU 0.48 / 0.46 / 0.48 ->
# 0.78 / 0.59 / 0.67; predicted digit share 0.54 / 0.55 / 0.54 -> 0.23 / 0.43 / 0.35 (runs/fdaprobe).
OPTIONS: dict[str, dict[str, Any]] = {
    "source-only": {},
    "oracle": {},
    "adaptseg": {"lambda_adv_main": 0.01, "lambda_adv_aux": 0.002, "disc_ndf": 32},
    "adaptseg-single": {"lambda_adv_main": 0.01, "disc_ndf": 32},
    "minent": {"lambda_ent": 0.1, "lambda_ent_aux": 0.02},
    "advent": {"lambda_adv_main": 0.01, "lambda_adv_aux": 0.002, "disc_ndf": 32},
    "fda-st": {"beta": 0.09, "lambda_ent": 0.05, "eta": 2.0, "st_start": 0.5, "lambda_st": 1.0, "st_prior": "source"},
    "dacs": {},  # the paper's settings: EMA 0.99, confidence 0.968, mixed loss weight 1
}
# `--source-aug`: the labelled images of every row recoloured (random_photometric: brightness, contrast, channel order,
# grey) and inverted with a probability. Chosen on target-TRAIN masks (validation, target-test never read), seed 0,
# source-only scored on the grey-background target-train images (photos disjoint from the colour ones, as target-test's
# are from target-train's): plain 0.073 (AdaBN 0.107), jitter 0.3 0.081 (0.106), jitter 0.3 + inversion 0.5 0.132
# (0.148). The target's digits are darker than their surroundings on light photos (MNIST-M's |photo - digit|), the
# source's always lighter: the inversion is the polarity the diagnosis would ask for (runs/b6/probe_srcaug.py).
SOURCE_AUG_TAG = " (source aug)"
PAPER = {
    "adaptseg": "lambda_adv main 0.001, aux 0.0002, lambda_seg_aux 0.1, D Adam 1e-4 (0.9, 0.99)",
    "minent": "lambda_ent 0.001 (aux 0.0002)",
    "advent": "lambda_adv main 0.001, aux 0.0002",
    "fda-st": "beta 0.01..0.09, lambda_ent 0.005, eta 2.0, class-wise thresholds min(median, 0.9)",
    "dacs": "EMA teacher alpha 0.99, pseudo-label confidence 0.968, ClassMix of half the source classes, colour jitter + blur",
}


# ------------------------------------------------------------------------------------------ data
def load_tensors(data: Path, size: int, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{split: {"x": uint8 (N, 3, S, S), "y": uint8 (N, S, S)}} decoded once through the data layer, cached."""
    from shiftkit.data import open_dataset
    from shiftkit.train.seg_data import SegTensors, check_masks

    CACHE.mkdir(parents=True, exist_ok=True)
    import hashlib

    tag = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:10]
    key = CACHE / f"digit_scenes_{tag}_s{size}.pt"
    if key.is_file():
        return torch.load(key, weights_only=True)
    out = {}
    for split in ("source", "target", "target-test"):
        ds = open_dataset(data / split, task="segmentation")
        check_masks(ds, progress, split)
        st = SegTensors(ds, size, 3).preload(progress, f"decoding {split}")
        xs = torch.stack([st._mem[i][0] for i in range(len(st))])
        ys = torch.stack([st._mem[i][1] for i in range(len(st))]).to(torch.uint8)
        out[split] = {"x": xs, "y": ys}
    out["classes"] = list(open_dataset(data / "source", task="segmentation").classes)
    torch.save(out, key)
    return out


class MemItems(torch.utils.data.Dataset):
    """In-memory split in the loaders' item format; `labelled=False` hides the masks (255 everywhere)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        y = self.y[i].long() if self.y is not None else torch.full(self.x.shape[-2:], 255, dtype=torch.long)
        return {"x": self.x[i].float() / 255.0, "y": y, "index": int(i), "ok": True, "path": str(i), "error": ""}


# ------------------------------------------------------------------------------------------ one run
def poly(step: int, total: int, power: float = 0.9) -> float:
    """DeepLab / AdaptSegNet learning-rate schedule: lr_t = lr (1 - t / T)^0.9."""
    return (1.0 - min(step, total - 1) / total) ** power


def sqrt_balanced_weights(masks: torch.Tensor, num_classes: int) -> list[float]:
    """w_c = f_c^(-1/2) / sum_k f_k^(1/2) (so sum_c f_c w_c = 1), f_c the class's share of the training
    pixels. 94% of B5 pixels are background: with plain CE a small model from scratch collapses to
    "all background" within a few hundred steps (measured here), so every row uses these weights."""
    m = masks.reshape(-1).long()
    m = m[m < num_classes]
    f = torch.bincount(m, minlength=num_classes).double()
    f = f / f.sum()
    w = torch.where(f > 0, f.clamp_min(1e-12).rsqrt(), torch.zeros_like(f))
    return (w / (w * f).sum()).tolist()


def make_model(num_classes: int, base: int):
    from shiftkit.models.segmentation import UNet

    return UNet(num_classes, in_channels=3, base=base, depth=3, aux=True)


def train_one(method_name: str, seed: int, args: SimpleNamespace, data: dict, out: Path) -> dict[str, Any]:
    """Train `method_name` with `seed`; returns target-test metrics, wall and CPU seconds; saves the model."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    with Timer() as t:
        classes = data["classes"]
        c = len(classes)
        oracle = method_name == "oracle"
        src = data["target"] if oracle else data["source"]
        weights = sqrt_balanced_weights(src["y"], c)
        method = build_seg_method(method_name, **OPTIONS.get(method_name, {}), class_weights=weights)
        model = make_model(c, args.base)
        target_items = MemItems(data["target"]["x"], None)  # never the target masks (oracle reads them as its source)
        eng = SimpleNamespace(model=model, net=model, num_classes=c, size=args.size, device=torch.device("cpu"),
                              total_steps=args.steps, global_step=0, streams={"target": target_items},
                              cfg=SimpleNamespace(eval_batch_size=256, progress=False), run=None)
        method.setup(eng)
        opts = {"model": torch.optim.Adam(model.parameters(), lr=args.lr)}
        extra = getattr(method, "optimizer_options", lambda: {})()
        for k, mod in method.modules().items():
            o = extra.get(k, {})
            opts[k] = torch.optim.Adam(mod.parameters(), lr=o.get("lr", 1e-4), betas=tuple(o.get("betas", (0.9, 0.99))))
        base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}
        g = torch.Generator().manual_seed(seed * 7919 + 17)
        g_aug = torch.Generator().manual_seed(seed * 104729 + 29)
        ns, nt = len(src["x"]), len(data["target"]["x"])
        epoch_len = max(1, args.steps // args.epochs)
        logs: dict[str, float] = {}
        for step in range(args.steps):
            if step % epoch_len == 0:
                eng.global_step = step
                model.eval()
                method.on_epoch_start(eng)
            model.train()
            for mod in method.modules().values():
                mod.train()
            f = poly(step, args.steps)
            for k, o in opts.items():
                for grp, lr0 in zip(o.param_groups, base_lr[k], strict=True):
                    grp["lr"] = lr0 * f
            si = torch.randint(0, ns, (args.batch,), generator=g)
            ti = torch.randint(0, nt, (args.batch,), generator=g)
            xs = src["x"][si].float() / 255.0
            if args.source_aug:  # the labelled stream only; its own generator, so the sampled indices stay the same
                xs = random_photometric(xs, args.source_aug[0], g_aug, invert=args.source_aug[1])
            batch = {"source": {"x": xs, "y": src["y"][si].long(), "index": si}}
            if "target" in method.streams:
                batch["target"] = {"x": data["target"]["x"][ti].float() / 255.0, "index": ti}
            for ph in method.phases(model, batch, StepInfo(step, step // epoch_len, args.steps)):
                losses = ph.resolve()
                total = sum(v.float() for v in losses.values())
                if not torch.isfinite(total):
                    raise RuntimeError(f"{method_name} seed {seed}: loss {total.item()} at step {step} ({list(losses)})")
                for o in opts.values():
                    o.zero_grad(set_to_none=True)
                total.backward()
                for grp in ph.groups:
                    opts[grp].step()
                for k, v in losses.items():
                    logs[k] = 0.9 * logs.get(k, float(v.detach())) + 0.1 * float(v.detach())
                logs.update({k: float(v) for k, v in ph.logs.items()})
            eng.global_step = step + 1
            if args.log_every and (step + 1) % args.log_every == 0:
                print(f"  {method_name} seed {seed} step {step + 1}: " + " ".join(f"{k} {v:.4g}" for k, v in logs.items()),
                      file=sys.stderr, flush=True)
        metrics = evaluate_models([model], data["target-test"], classes)
        unlabelled = target_train_stats(model, data["target"]["x"], data["source"]["y"], c)
    torch.save(model.state_dict(), out / f"{method_name}-seed{seed}.pt")
    return {"method": method_name, "seed": seed, "metrics": metrics, "wall_s": t.wall, "cpu_s": t.cpu,
            "final_losses": {k: round(v, 5) for k, v in logs.items()}, "target_train_unlabelled": unlabelled,
            "config": method.config()}


@torch.no_grad()
def target_train_stats(model, x: torch.Tensor, source_masks: torch.Tensor, c: int, batch: int = 500) -> dict[str, Any]:
    """Label-free diagnostics on target-train images (no mask read): share of pixels predicted as a digit
    (vs the source's digit-pixel share), the digit classes' shares of those pixels, mean normalised entropy."""
    model.eval()
    counts = torch.zeros(c, dtype=torch.float64)
    ent = 0.0
    for i in range(0, len(x), batch):
        pr = torch.softmax(model(x[i : i + batch].float() / 255.0), 1)
        counts += torch.bincount(pr.argmax(1).flatten(), minlength=c).double()
        ent += float((-(pr * pr.clamp_min(1e-12).log()).sum(1) / math.log(c)).sum())
    src = torch.bincount(source_masks.flatten().long(), minlength=c).double()
    return {"predicted_digit_share": round(float(1 - counts[0] / counts.sum()), 4),
            "source_digit_share": round(float(1 - src[0] / src.sum()), 4),
            "predicted_digit_class_shares": [round(float(v), 4) for v in counts[1:] / counts[1:].sum().clamp_min(1)],
            "mean_entropy": round(ent / counts.sum().item(), 4)}


@torch.no_grad()
def evaluate_models(models: list, split: dict, classes: list[str], batch: int = 250) -> dict[str, float]:
    from shiftkit.adapt.advent import ensemble_probs

    for m in models:
        m.eval()
    meter = SegMeter(len(classes), classes)
    for i in range(0, len(split["x"]), batch):
        x = split["x"][i : i + batch].float() / 255.0
        meter.update(ensemble_probs(models, x), split["y"][i : i + batch].long())
    r = meter.compute()
    out = {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]}
    out.update({k: v for k, v in r.items() if k.startswith("iou_") and v is not None})
    return out


@torch.no_grad()
def save_figures(methods: list[str], seed: int, data: dict, base: int, folder: Path, n: int = 4) -> list[str]:
    """Per method: source and target-test rows of image | ground truth | prediction | entropy (run folder only)."""
    from shiftkit.report.seg_figures import save_domain_grid

    paths = []
    c = len(data["classes"])
    for m in methods:
        f = Path(folder).parent / f"{m}-seed{seed}.pt"
        if not f.is_file():
            continue
        net = make_model(c, base)
        net.load_state_dict(torch.load(f, weights_only=True))
        net.eval()
        doms = {}
        for name in ("source", "target-test"):
            x = data[name]["x"][:n].float() / 255.0
            doms[name] = (list(x), torch.softmax(net(x), 1), list(data[name]["y"][:n].long()))
        paths.append(save_domain_grid(Path(folder) / f"{m}.png", doms, c, cell=96))
    return paths


def analyse(res: dict[str, Any]) -> dict[str, Any]:
    """Derived figures (from the rows' per-seed metrics) and the reading of the result: the median over seeds
    of the background IoU and of the mean IoU over the 10 digit classes, per row, and what they say."""
    import statistics

    per: dict[str, dict[str, float]] = {}
    for row in res["rows"]:
        seeds = row.get("per_seed", [])
        if not seeds:
            continue
        bg = [p["metrics"].get("iou_background") or 0.0 for p in seeds]
        dig = [statistics.fmean(p["metrics"].get(f"iou_{d}") or 0.0 for d in range(10)) for p in seeds]
        share = [p.get("target_train_unlabelled", {}).get("predicted_digit_share") for p in seeds]
        per[row["method"]] = {"background_iou_median": round(statistics.median(bg), 4),
                              "digit_miou_median": round(statistics.median(dig), 4),
                              "digit_miou_values": [round(v, 4) for v in dig],
                              "target_train_predicted_digit_share": share}
    notes = []
    if "oracle" in per and "source-only" in per:
        adapted = {m: v for m, v in per.items() if m not in ("oracle", "source-only")}
        best_digit = max((v["digit_miou_median"] for v in adapted.values()), default=0.0)
        notes.append(
            f"Every adapted row's gain over source-only comes from the background class: source-only labels much of the "
            f"photo texture as digits (background IoU {per['source-only']['background_iou_median']}), the adversarial rows "
            f"mostly stop doing so, but no adapted row segments digits (best digit-class mIoU {best_digit} against the "
            f"oracle's {per['oracle']['digit_miou_median']}). So the 90%-of-oracle goal is far from met.")
        notes.append(
            "The oracle itself is weak at this budget (32 px, U-Net base 8, 2000 steps: digits on textured photos are "
            "much harder than the clean source, where the same recipe did far better on held-out source canvases "
            "while the recipe was chosen), and it varies a lot between seeds.")
    collapsed = {m: [i for i, s in enumerate(v["target_train_predicted_digit_share"]) if s is not None and s > 0.5]
                 for m, v in per.items()}
    collapsed = {m: v for m, v in collapsed.items() if v}
    if collapsed:
        notes.append("Runs whose predictions cover more than half of the target-train pixels with digits (label-free "
                     f"check; seed positions): {collapsed}. In these runs the adaptation amplified the foreground "
                     "over-prediction that the class-weighted source loss leaves on target textures instead of removing it"
                     + ("; fda-st's pseudo labels keep a share of every predicted digit class, so its self-training locks "
                        "that over-prediction in." if "fda-st" in collapsed else "."))
    if "adaptseg" in per and "adaptseg-single" in per:
        notes.append("Multi-level vs single-level AdaptSegNet: the multi-level median is higher, but both are driven by the "
                     "background class and their digit IoUs are near zero, so the comparison says little about the value "
                     "of the auxiliary level here.")
    return {"per_row": per, "notes": notes}


def _worker(task):
    name, seed, args, out = task
    return train_one(name, seed, args, _DATA, out)


_DATA: dict = {}


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA / NAME), help="digit-scenes folder (built there when missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--size", type=int, default=32, help="training/eval size in pixels (canvases are 64x64)")
    p.add_argument("--base", type=int, default=8, help="U-Net base width (channels of the first stage)")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps per run")
    p.add_argument("--epochs", type=int, default=4, help="epoch boundaries per run (when fda-st may pseudo-label)")
    p.add_argument("--batch", type=int, default=16, help="source (and target) images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="segmenter Adam learning rate (poly decay)")
    p.add_argument("--source-aug", type=float, nargs=2, metavar=("JITTER", "INVERT"), default=None,
                   help="recolour every row's labelled images (source; target-train for the oracle) with random_photometric "
                        "(strength JITTER) and invert each with probability INVERT; rows are tagged ' (source aug)'")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default=str(ROOT.parent / "runs" / "bench" / "digit_scenes"), help="models and logs")
    p.add_argument("--result", default=None, help="result JSON (default benchmarks/results/digit_scenes.json)")
    p.add_argument("--reduced", action="store_true", help="mark the result as a reduced run")
    p.add_argument("--log-every", type=int, default=0, help="print running losses every N steps")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--annotate", action="store_true", help="only (re)compute the analysis block of an existing result JSON")
    a = p.parse_args(argv)
    if a.annotate:
        path = Path(a.result) if a.result else ROOT / "results" / "digit_scenes.json"
        res = json.loads(path.read_text())
        res["analysis"] = analyse(res)
        res["analysis"]["computed_by"] = "python benchmarks/digit_scenes.py --annotate (from the stored per-seed metrics)"
        write_result(res, path)
        print(dump(res["analysis"]))
        return 0
    args = SimpleNamespace(**vars(a))
    progress = not a.quiet and sys.stderr.isatty()
    t0 = time.perf_counter()
    data_dir = Path(a.data)
    if not (data_dir / "target-test").is_dir():
        prepare_data(NAME, data_dir, seed=0)
    with Timer() as t_data:
        data = load_tensors(data_dir, a.size, progress)
    global _DATA
    _DATA = data
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(m, s, args, out) for s in a.seeds for m in a.methods]
    tasks.sort(key=lambda t: (t[0] in ("source-only", "oracle"), t[1]))  # two-phase methods first
    runs: list[dict] = []
    ctx = mp.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=a.jobs, mp_context=ctx) as pool:
        for r in pool.map(_worker, tasks):
            runs.append(r)
            print(f"{r['method']:<16} seed {r['seed']}: miou {r['metrics']['miou']:.4f}  pixel acc "
                  f"{r['metrics']['pixel_accuracy']:.4f}  ({r['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    rows: dict[str, Row] = {}
    for m in a.methods:
        rows[m] = Row(m, m == "oracle")
        rows[m].extra["settings"] = OPTIONS.get(m, {})
        if m in PAPER:
            rows[m].extra["paper_settings"] = PAPER[m]
    for r in sorted(runs, key=lambda r: (r["method"], r["seed"])):
        rows[r["method"]].add({"miou": r["metrics"]["miou"], "pixel_accuracy": r["metrics"]["pixel_accuracy"]},
                              r["wall_s"], r["cpu_s"])
        rows[r["method"]].extra.setdefault("per_seed", []).append(r)
    if "minent" in a.methods and "advent" in a.methods:
        ens = Row("advent-ensemble", False, notes="mean softmax of the minent and advent models of each seed; "
                                                  "wall = both trainings")
        for s in a.seeds:
            models = []
            for m in ("minent", "advent"):
                net = make_model(len(data["classes"]), a.base)
                net.load_state_dict(torch.load(out / f"{m}-seed{s}.pt", weights_only=True))
                models.append(net)
            with Timer() as te:
                met = evaluate_models(models, data["target-test"], data["classes"])
            walls = [r["wall_s"] for r in runs if r["seed"] == s and r["method"] in ("minent", "advent")]
            cpus = [r["cpu_s"] for r in runs if r["seed"] == s and r["method"] in ("minent", "advent")]
            ens.add({"miou": met["miou"], "pixel_accuracy": met["pixel_accuracy"]}, sum(walls) + te.wall, sum(cpus) + te.cpu)
            ens.extra.setdefault("per_seed", []).append({"seed": s, "metrics": met})
        rows["advent-ensemble"] = ens
    figures = save_figures(a.methods, a.seeds[0], data, a.base, out / "figures")
    order = [m for m in ["source-only", "adaptseg-single", "adaptseg", "minent", "advent", "advent-ensemble", "fda-st", "dacs", "oracle"]
             if m in rows]
    row_list = [rows[m] for m in order]
    if a.source_aug:
        for r in row_list:
            r.method += SOURCE_AUG_TAG
            r.extra["source_aug"] = {"jitter": a.source_aug[0], "invert": a.source_aug[1]}
    import statistics

    med = {m: statistics.median(rows[m].metrics["miou"]) for m in order}
    verdict: dict[str, Any] = {}
    if "source-only" in med:
        adapted = [m for m in order if m not in ("source-only", "oracle")]
        verdict["beats_source_only"] = {m: med[m] > med["source-only"] for m in adapted}
        if adapted and "oracle" in med:
            best = max(adapted, key=lambda m: med[m])
            verdict["best_method"] = best
            verdict["best_over_oracle"] = round(med[best] / med["oracle"], 4) if med["oracle"] > 0 else None
            verdict["best_reaches_90pct_of_oracle"] = med[best] >= 0.9 * med["oracle"]
        if "adaptseg" in med and "adaptseg-single" in med:
            verdict["multi_level_beats_single_level"] = med["adaptseg"] > med["adaptseg-single"]
    total = time.perf_counter() - t0
    verdict["total_wall_s"] = round(total, 1)
    verdict["fits_60_minutes"] = total <= 3600
    settings = {"size": a.size, "model": f"U-Net base {a.base}, depth 3, aux level on the bottleneck (from scratch)",
                "steps": a.steps, "batch": a.batch, "optimizer": f"Adam lr {a.lr}, poly 0.9 decay; discriminators Adam 1e-4 (0.9, 0.99)",
                "jobs": a.jobs, "threads_per_job": a.threads, "data": str(data_dir), "data_load_s": round(t_data.wall, 1),
                "selection": "last step (no selection on target-test); recipe (lr, batch, steps) chosen on held-out source "
                             "canvases, adaptation weights a priori (checked only with label-free target-train statistics)", "reduced": bool(a.reduced), "figures": figures,
                "class_weights": "1/sqrt(pixel share) of the run's training labels, every row (see sqrt_balanced_weights)",
                "loss_weights_note": "adaptation weights x10 (adversarial, FDA entropy), x100 (MinEnt entropy) of the papers' DeepLab/SGD values, "
                                     "chosen a priori for a few thousand Adam steps; the papers' values are listed per row; "
                                     "FDA beta 0.09 (at 32 px the paper's 0.01 swaps only the DC term)",
                "target_label_use": "target-train masks: oracle row only; target-test masks: final scoring only"}
    anchors = {
        "gta5_cityscapes_deeplabv2_r101_miou": "source-only 36.6-37.3; AdaptSegNet multi-level 42.4 (Tsai et al. 2018); "
                                               "ADVENT MinEnt+AdvEnt 45.5 (Vu et al. 2019); FDA-MBT+SSL 50.45 (Yang & Soatto 2020)",
        "relative_gains": "AdaptSegNet +5, ADVENT +8, FDA-MBT +13 mIoU over source-only",
    }
    res = result(NAME, a.seeds, row_list, anchors, {"metric": "miou", "best_at_least_fraction_of_oracle": 0.9,
                                                   "every_method_beats_source_only": True}, settings, verdict)
    if a.reduced:
        res["reduced"] = True
    res = json.loads(json.dumps(res, default=str))
    res["analysis"] = analyse(res)
    path = write_result(res, a.result)
    print(table(row_list, ["miou", "pixel_accuracy"]))
    print(dump(verdict))
    print(f"result: {path}  ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
