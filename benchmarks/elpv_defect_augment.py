"""The source article's augmentation experiment on B1 `elpv-defect`: does shiftkit's *guided* plan
(diagnose where the model fails, augment only the minority class along those properties until
balanced) beat the baseline and blind augmentation, with the same model and the same budget?

Arms (one model recipe, one fixed number of optimisation steps for all; augmented sets are larger,
so the budget is in iterations, not epochs):
  baseline         the training set as is
  blind            + N augmented images of every class (proportional to class size), every op at
                   default strengths (`shiftkit augment --plan` with an all-ops, all-classes plan)
  guided           + N images from shiftkit's plan: out-of-fold predictions on the TRAINING set
                   (k-fold cross-predictions; the validation half is never looked at) ->
                   `shiftkit analyze --balance sqrt` -> plan.json (minority class, diagnosed
                   properties, the declared symmetries that survive analyze's orientation check,
                   square-root balancing) -> `shiftkit augment --plan` -> retrain. N is whatever
                   the plan adds (`--balance full` gives the article's full balancing).
  balance-sym      control, not in the article: + N minority images with the plan's symmetries
                   only: what balancing alone buys, without diagnosed ops.

Why square-root balancing (decided before any validation figure of it was seen, from the training
half only): with a frozen backbone, augmented copies barely change how the linear head *ranks*
cells; growing the minority to 1:1 mostly moves the decision prior from the data's 2.1:1 to 1:1,
buying defective recall with accuracy (the first runs: -1.5 points). Square-root balancing
(Mahajan et al. 2018; Kang et al. 2020) moves it half way in log-odds. On the train half alone
(stratified 10% subsets scored on the other 90%, 15 draws, symmetry copies of cached features)
growing the minority to 0.69 of the majority (the square-root target) cost a median 0.3 points of
accuracy for +5.6 of recall, where full balancing cost 1.5 for +9.3; at the square-root count,
copies made by the diagnosed ops, by blur or by every op gave the same ranking (AUC 0.869-0.872
against 0.871 unaugmented). Why no rot90: every ELPV cell has its busbars the same way
round (orientation check in `analyze`: KS 1.00 between the training cells' gradient-orientation
ratio and its negation), so a turned cell is off the data's distribution, and turning only the
minority's new images makes "turned" a defect cue.

Regimes: the full train half (754 functional / 357 defective) and a small-data regime (a
stratified 10% of the train half, drawn per seed: the situation the article was about).
Metrics on the validation half: accuracy and recall_defective; medians over seeds. Also reported,
never used to choose: roc_auc_defective (how well the model ranks cells, whatever its threshold),
which separates a better model from a moved decision threshold.

Model (CPU-cheap, same for every arm): ImageNet MobileNetV2, frozen, at 160x160, with a linear head
trained by `shiftkit.train.fit` on cached features (`--model frozen`, default), or fine-tuned end to
end (`--model finetune`, much slower). Augmented images are written to disk by `shiftkit augment`
(offline augmentation, as in the article), so a frozen backbone sees them as new feature vectors.

    python benchmarks/elpv_defect_augment.py --regimes small full --seeds 0 1 2 --threads 1
    python benchmarks/elpv_defect_augment.py --regimes small full --seeds 0 1 2 --threads 1 --balance full
    python benchmarks/elpv_defect_augment.py --regimes small --seeds 0 --keep   # one quick look
    python benchmarks/elpv_defect_augment.py --combine small.json full.json     # regimes run separately
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

BENCH = "elpv-defect-augment"
ARMS = ["baseline", "blind", "guided", "balance-sym"]
REGIMES = ["small", "full"]
SYMMETRIES = "hflip,vflip,rot90"  # label-preserving for square solar cells
BLIND_OPS = ("hflip", "vflip", "rot90", "crop", "brightness", "contrast", "gamma", "blur", "sharpen", "noise")
ANCHORS = {
    "article_resnet50_baseline": "86.06% accuracy / 62.9% defective recall, ImageNet ResNet-50 (source article)",
    "article_targeted_augmentation": "about +3 points accuracy and +8.4 points defective recall (source article)",
    "article_blind_augmentation": "augmenting everything did not help (source article, qualitative)",
    "frozen_mobilenet_v2_logreg": "86.8% / 70.1%: frozen ImageNet MobileNetV2 + logistic regression, full train half (BENCHMARKS.md)",
}
GOAL = {"small": "guided recall_defective >= baseline + 0.05 at accuracy >= baseline's, and guided beats blind",
        "full": "guided loses nothing against baseline (accuracy and recall_defective)"}


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------


def labeled_items(root: Path) -> tuple[list[str], list[int], list[str]]:
    from shiftkit.data import open_dataset

    ds = open_dataset(root, task="classification")
    return ds.paths(), ds.labels(), list(ds.classes)


def copy_subset(src: Path, rel_paths: list[str], out: Path) -> Path:
    """An imagefolder of the given files (bytes copied, so content hashes and caches still hit)."""
    if out.exists():
        shutil.rmtree(out)
    for rel in rel_paths:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst)
    return out


def stratified_pick(labels: list[int], frac: float, seed: int) -> list[int]:
    """Indices of a stratified `frac` sample (at least 2 per class), drawn with `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(np.asarray(labels) == c)
        n = max(2, int(round(frac * len(idx))))
        keep += rng.choice(idx, size=n, replace=False).tolist()
    return sorted(keep)


def stratified_folds(labels: list[int], k: int, seed: int) -> list[list[int]]:
    """k disjoint folds with each class spread evenly (round-robin over a seeded permutation)."""
    import numpy as np

    rng = np.random.default_rng(seed + 1000)
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(np.asarray(labels) == c)).tolist()
        for j, i in enumerate(idx):
            folds[j % k].append(i)
    return [sorted(f) for f in folds]


# ------------------------------------------------------------------------------------------------
# the one model recipe
# ------------------------------------------------------------------------------------------------


def train(source: Path, run_dir: Path, a: argparse.Namespace, seed: int) -> tuple[Path, float, float]:
    """shiftkit.train.fit with the benchmark's recipe and a fixed step budget; returns (checkpoint, wall, cpu)."""
    common = dict(source=source, backbone="mobilenet_v2", size=a.size, batch_size=a.batch_size, seed=seed,
                  device=a.device, select="last", progress=False, epochs=a.epochs, iters_per_epoch=a.iters,
                  class_weights=None if a.class_weights == "none" else "balanced")
    if a.model == "frozen":
        kw = dict(freeze_backbone=True, lr=a.lr or 1e-3, head_lr_mult=1.0, weight_decay=1e-4)
    else:
        kw = dict(lr=a.lr or 5e-4, head_lr_mult=10.0, weight_decay=0.01, label_smoothing=0.1, channels_last=True)
    res, wall, cpu = C.fit_once(run_dir, **common, **kw)
    return Path(res["out"]) / "checkpoints" / "best.safetensors", wall, cpu


def probabilities(ckpt: Path, data: Path, a: argparse.Namespace):
    """(probs (N, C), relative paths, labels, classes) of a checkpoint on a labeled folder. A frozen
    backbone's features come from shiftkit's feature cache (the same numbers a full forward gives)."""
    import numpy as np
    import torch

    from shiftkit.train.checkpoint import load_model
    from shiftkit.train.evaluation import _labels_on, run_model
    from shiftkit.train.loaders import open_any

    model, info, _ = load_model(ckpt, "cpu")
    classes = list(info["classes"])
    ds = open_any(data, task="classification")
    labels = _labels_on(ds, classes)
    if a.model == "frozen":
        from shiftkit.models.features import extract_features

        fs = extract_features(model.backbone, ds, size=a.size, batch_size=64, device="cpu", progress=False)
        with torch.no_grad():
            f = model.bottleneck(torch.from_numpy(np.ascontiguousarray(fs.features)))
            probs = torch.softmax(model.head(f), 1).numpy()
        return probs, list(fs.paths), np.asarray(labels), classes
    r = run_model(model, ds, info, 64, a.device, 0, "skip", False, labels)
    return r["probs"], list(r["paths"]), r["y"], classes


def score(ckpt: Path, val: Path, a: argparse.Namespace) -> dict[str, float]:
    from shiftkit.train.metrics import classification_metrics

    probs, _, y, classes = probabilities(ckpt, val, a)
    m = classification_metrics(y.tolist(), probs.argmax(1).tolist(), classes)
    out = {k: float(m[k]) for k in ("accuracy", "recall_defective", "recall_functional", "balanced_accuracy")}
    out["roc_auc_defective"] = roc_auc(probs[:, classes.index("defective")], y == classes.index("defective"))
    return out


def roc_auc(score, positive) -> float:
    """Area under the ROC curve of `score` for the `positive` mask (Mann-Whitney, ties count half):
    how well the model *ranks* cells, whatever its decision threshold. Reported, never used to choose."""
    import numpy as np

    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, cnt = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]  # 1-based ranks, ties averaged
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------------------------------------
# the arms' training sets
# ------------------------------------------------------------------------------------------------


def shiftkit_cli(*argv: str) -> None:
    """Run a `shiftkit` command in-process (the exact CLI code path); fail loudly on a non-zero exit."""
    from shiftkit.cli import main

    print("  $ shiftkit " + " ".join(argv), file=sys.stderr, flush=True)
    rc = main(list(argv))
    if rc != 0:
        raise SystemExit(f"shiftkit {argv[0]} exited with {rc}")


def cross_predictions(train_dir: Path, work: Path, a: argparse.Namespace, seed: int) -> Path:
    """k-fold out-of-fold predictions on the training set, one CSV with paths relative to train_dir."""
    import numpy as np

    from shiftkit.io import atomic_write_text
    from shiftkit.train.evaluation import predictions_csv

    paths, labels, classes = labeled_items(train_dir)
    all_p, all_probs, all_y = [], [], []
    for j, held in enumerate(stratified_folds(labels, a.folds, seed)):
        held_set = set(held)
        fit_dir = copy_subset(train_dir, [p for i, p in enumerate(paths) if i not in held_set], work / f"fold{j}" / "fit")
        out_dir = copy_subset(train_dir, [paths[i] for i in held], work / f"fold{j}" / "held")
        ckpt, _, _ = train(fit_dir, work / f"fold{j}" / "run", a, seed)
        probs, ps, y, cls = probabilities(ckpt, out_dir, a)
        if cls != classes:
            raise SystemExit(f"fold model classes {cls} != training classes {classes}")
        all_p += ps
        all_probs.append(probs)
        all_y.append(y)
    csv_path = work / "oof_predictions.csv"
    atomic_write_text(csv_path, predictions_csv(all_p, np.concatenate(all_probs), classes, np.concatenate(all_y)))
    return csv_path


def analysis_bins(counts: dict[str, int], bins: str) -> int:
    """Quantile buckets for `analyze`: given, or `auto` = about 12 minority images per bucket, 2 to 5
    (with 36 defective cells, 5 buckets hold ~7 each and no Wilson interval can clear the overall
    recall: the diagnosis would be blind by construction). Decided from training counts only."""
    if bins != "auto":
        return int(bins)
    return max(2, min(5, min(n for n in counts.values() if n > 0) // 12))


def plan_new_samples(plan_path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (json.loads(plan_path.read_text()).get("new_samples") or {}).items()}


def blind_plan(counts: dict[str, int], n_new: int, path: Path) -> Path:
    """Every op at its default strength (p = 0.5), every class, n_new images split by class size."""
    from shiftkit.augment.policy import OpSpec, Plan
    from shiftkit.io import atomic_write_json

    total = sum(counts.values())
    shares = {c: n_new * n / total for c, n in counts.items()}
    new = {c: int(math.floor(s)) for c, s in shares.items()}
    for c in sorted(shares, key=lambda c: shares[c] - new[c], reverse=True)[: n_new - sum(new.values())]:
        new[c] += 1  # largest remainders, so the total is exactly n_new
    plan = Plan([OpSpec(o, p=0.5) for o in BLIND_OPS], 1.0, None, new,
                [f"blind: every op at default strength, every class; {n_new} new images split by class size"])
    atomic_write_json(path, plan.to_dict())
    return path


def plan_symmetries(plan: dict) -> list[str]:
    """The declared symmetries the guided plan kept (analyze drops those off the data's distribution)."""
    from shiftkit.analysis.recommend import SYMMETRIES as KNOWN

    return [o["op"] for o in plan["ops"] if o["op"] in KNOWN and o.get("why") == "declared label-preserving symmetry"]


def symmetry_plan(minority: str, n_new: int, path: Path, symmetries: list[str] | None = None) -> Path:
    """n_new minority images made with `symmetries` only (default: every declared one)."""
    from shiftkit.augment.policy import OpSpec, Plan
    from shiftkit.io import atomic_write_json

    symmetries = SYMMETRIES.split(",") if symmetries is None else symmetries
    ops = [OpSpec(s, p=0.75 if s == "rot90" else 0.5) for s in symmetries] or [OpSpec("hflip", p=0.5)]
    plan = Plan(ops, 1.0, [minority], {minority: n_new}, [f"control: {n_new} {minority} images with symmetries only"])
    atomic_write_json(path, plan.to_dict())
    return path


# ------------------------------------------------------------------------------------------------
# one regime, one seed
# ------------------------------------------------------------------------------------------------


def run_seed(regime: str, seed: int, root: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """All arms for one (regime, seed): {arm: {metrics, wall_s, cpu_s, n_train, ...}}."""
    val = root / "val"
    if regime == "small":
        paths, labels, _ = labeled_items(root / "train")
        train_dir = copy_subset(root / "train", [paths[i] for i in stratified_pick(labels, a.small_frac, seed)],
                                work / "train")
    else:
        train_dir = root / "train"
    paths, labels, classes = labeled_items(train_dir)
    counts = {c: labels.count(i) for i, c in enumerate(classes)}
    minority = min(counts, key=counts.get)
    out: dict[str, Any] = {}

    def arm(name: str, data: Path, prep_wall: float, prep_cpu: float, extra: dict | None = None) -> None:
        ckpt, wall, cpu = train(data, work / "runs" / name, a, seed)
        with C.Timer() as t:
            figs = score(ckpt, val, a)
        n = len(labeled_items(data)[0])
        out[name] = {"metrics": figs, "train_wall_s": wall, "wall_s": prep_wall + wall + t.wall,
                     "cpu_s": prep_cpu + cpu + t.cpu, "n_train": n, **(extra or {})}
        print(f"[{regime} seed {seed}] {name:<12} n={n:<5} accuracy {figs['accuracy']:.4f} "
              f"recall_defective {figs['recall_defective']:.4f}  ({prep_wall + wall + t.wall:.0f}s)", file=sys.stderr, flush=True)

    # guided first: its plan fixes N, the number of new images the other augmented arms get
    with C.Timer() as tg:
        oof = cross_predictions(train_dir, work / "diagnose", a, seed)
        bins = analysis_bins(counts, a.bins)
        shiftkit_cli("analyze", "--predictions", str(oof), "--data", str(train_dir), "--out", str(work / "analysis"),
                     "--symmetries", SYMMETRIES, "--bins", str(bins), "--balance", a.balance, "--device", "cpu")
        plan_path = work / "analysis" / "plan.json"
        new = plan_new_samples(plan_path)
        shiftkit_cli("augment", "--data", str(train_dir), "--plan", str(plan_path), "--out", str(work / "data" / "guided"),
                     "--seed", str(seed), "--overwrite")
    plan = json.loads(plan_path.read_text())
    n_new = sum(new.values())
    guided_extra = {"new_samples": new, "plan_ops": [{k: o[k] for k in ("op", "low", "high", "classes") if k in o}
                                                    for o in plan["ops"]],
                    "analysis_bins": bins, "diagnosis": json.loads((work / "analysis" / "metrics.json").read_text())["recall"],
                    "plan_reasoning": plan.get("reasoning", [])}
    if "baseline" in a.arms:
        arm("baseline", train_dir, 0.0, 0.0)
    if "guided" in a.arms:
        arm("guided", work / "data" / "guided", tg.wall, tg.cpu, guided_extra)
    if "blind" in a.arms:
        with C.Timer() as tb:
            p = blind_plan(counts, n_new, work / "blind_plan.json")
            shiftkit_cli("augment", "--data", str(train_dir), "--plan", str(p), "--out", str(work / "data" / "blind"),
                         "--seed", str(seed), "--overwrite")
        arm("blind", work / "data" / "blind", tb.wall, tb.cpu, {"new_samples": plan_new_samples(p)})
    if "balance-sym" in a.arms:
        with C.Timer() as ts:
            p = symmetry_plan(minority, n_new, work / "sym_plan.json", plan_symmetries(plan))
            shiftkit_cli("augment", "--data", str(train_dir), "--plan", str(p), "--out", str(work / "data" / "balance-sym"),
                         "--seed", str(seed), "--overwrite")
        arm("balance-sym", work / "data" / "balance-sym", ts.wall, ts.cpu, {"new_samples": plan_new_samples(p)})
    if not a.keep:
        shutil.rmtree(work / "data", ignore_errors=True)
        shutil.rmtree(work / "diagnose", ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------
# verdict and result
# ------------------------------------------------------------------------------------------------


def med(rows: dict[str, C.Row], arm: str, metric: str) -> float | None:
    r = rows.get(arm)
    if r is None or not r.metrics.get(metric):
        return None
    return statistics.median(r.metrics[metric])


def verdict_for(regime: str, rows: dict[str, C.Row]) -> dict[str, Any]:
    g_acc, g_rec = med(rows, "guided", "accuracy"), med(rows, "guided", "recall_defective")
    b_acc, b_rec = med(rows, "baseline", "accuracy"), med(rows, "baseline", "recall_defective")
    v: dict[str, Any] = {"guided_minus_baseline": None, "guided_minus_blind": None}
    if None not in (g_acc, g_rec, b_acc, b_rec):
        v["guided_minus_baseline"] = {"accuracy": round(g_acc - b_acc, 4), "recall_defective": round(g_rec - b_rec, 4)}
    bl_acc, bl_rec = med(rows, "blind", "accuracy"), med(rows, "blind", "recall_defective")
    if None not in (g_acc, g_rec, bl_acc, bl_rec):
        v["guided_minus_blind"] = {"accuracy": round(g_acc - bl_acc, 4), "recall_defective": round(g_rec - bl_rec, 4)}
    d, db = v["guided_minus_baseline"], v["guided_minus_blind"]
    if regime == "small" and d and db:
        v["met"] = bool(d["recall_defective"] >= 0.05 and d["accuracy"] >= 0.0
                        and db["recall_defective"] >= 0 and db["accuracy"] >= 0 and (db["recall_defective"] + db["accuracy"]) > 0)
    elif regime == "full" and d:
        v["met"] = bool(d["recall_defective"] >= 0.0 and d["accuracy"] >= 0.0)
    v["goal"] = GOAL[regime]
    return v


def variant_tag(settings: dict) -> str:
    """Suffix naming a run's recipe where it differs from the default (frozen, no class weights)."""
    tags = []
    if settings.get("class_weights", "none") != "none":
        tags.append(f"class weights {settings['class_weights']}")
    if settings.get("model", "frozen") != "frozen":
        tags.append(settings["model"])
    if settings.get("balance") == "full":  # runs made before --balance existed: tag them with PATH::TAG
        tags.append("full balancing")
    return f" ({', '.join(tags)})" if tags else ""


def combine(parts: list[str], out: str | None, notes: list[str] | None = None) -> Path:
    """One result from runs of separate regimes (e.g. run in parallel): rows, verdicts and per-seed
    figures side by side, every command kept. A part given as `PATH::TAG` gets TAG in its names
    (e.g. a run made with an earlier version of an op)."""
    docs, extra = [], []
    for p in parts:
        path, _, tag = p.partition("::")
        docs.append(json.loads(Path(path).read_text()))
        extra.append(tag)
    for d, more in zip(docs, extra, strict=True):  # runs of another recipe variant keep their own row names and verdict keys
        tag = variant_tag(d["settings"])
        if more:
            tag = f"{tag[:-1]}, {more})" if tag else f" ({more})"
        if tag:
            for r in d["rows"]:
                r["method"] += tag
            d["verdict"] = {k + tag: v for k, v in d["verdict"].items()}
            for key in ("per_seed", "seeds_done"):
                d["settings"][key] = {k + tag: v for k, v in d["settings"].get(key, {}).items()}
    res = dict(docs[0])
    res["command"] = " && ".join(d["command"] for d in docs)
    res["rows"] = [r for d in docs for r in d["rows"]]
    res["verdict"] = {k: v for d in docs for k, v in d["verdict"].items()}
    res["seeds"] = sorted({s for d in docs for s in d["seeds"]})
    settings = {"runs": [d["settings"] for d in docs]}
    for key in ("per_seed", "seeds_done"):
        settings[key] = {k: v for d in docs for k, v in d["settings"].get(key, {}).items()}
        for d in settings["runs"]:
            d.pop(key, None)
    settings["complete"] = all(d["settings"].get("complete") for d in docs)
    res["settings"] = settings
    res["parts"] = [{"command": d["command"], "date": d["date"], "machine": d["machine"], "tag": t} for d, t in zip(docs, extra, strict=True)]
    if notes:
        res["notes"] = notes
    return C.write_result(res, out)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--combine":  # merge result files of separate runs: --combine A.json B.json [--result OUT]
        cp = argparse.ArgumentParser(prog="elpv_defect_augment.py --combine")
        cp.add_argument("parts", nargs="+")
        cp.add_argument("--result", default=None)
        cp.add_argument("--note", action="append", default=[], help="a line for the result's notes (repeatable)")
        ca = cp.parse_args(argv[1:])
        print(f"result: {combine(ca.parts, ca.result, ca.note)}")
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--regimes", nargs="+", default=REGIMES, choices=REGIMES)
    ap.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    ap.add_argument("--model", default="frozen", choices=["frozen", "finetune"],
                    help="frozen MobileNetV2 + linear head on cached features (default), or fine-tuned end to end")
    ap.add_argument("--size", type=int, default=160, help="input side in pixels (cells are 300x300)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of --iters steps each: the fixed budget of every arm")
    ap.add_argument("--iters", type=int, default=30, help="optimisation steps per epoch (fixed across arms)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 (frozen) or 5e-4 (finetune)")
    ap.add_argument("--class-weights", default="none", choices=["none", "balanced"],
                    help="loss weights of the one recipe (default none: the imbalance is the plan's to fix, as in the article)")
    ap.add_argument("--small-frac", type=float, default=0.10, help="stratified fraction of the train half (small regime)")
    ap.add_argument("--bins", default="auto", help="`analyze --bins`: a number, or auto (~12 minority images per bucket, 2-5)")
    ap.add_argument("--balance", default="sqrt", choices=["full", "sqrt"],
                    help="`analyze --balance` of the guided plan: square-root (default) or full balancing")
    ap.add_argument("--folds", type=int, default=2, help="folds of the out-of-fold diagnosis on the training set")
    ap.add_argument("--data", default=None, help="B1 folder (default runs/data/elpv-defect; built if missing)")
    ap.add_argument("--work", default="runs/bench/elpv-defect-augment", help="scratch (gitignored)")
    ap.add_argument("--result", default=None, help="default benchmarks/results/elpv_defect_augment.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the augmented sets and fold folders")
    a = ap.parse_args(argv)
    if a.bins != "auto" and not (a.bins.isdigit() and int(a.bins) >= 2):
        ap.error("--bins must be auto or an integer >= 2")
    if a.folds < 2:
        ap.error("--folds must be >= 2")
    if not 0 < a.small_frac < 1:
        ap.error("--small-frac must be in (0, 1)")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    root = C.prepare_data("elpv-defect", a.data)
    all_rows: dict[str, dict[str, C.Row]] = {}
    per_seed: dict[str, Any] = {}
    done_seeds: dict[str, list[int]] = {}
    settings = {k: v for k, v in vars(a).items() if k not in ("seeds",)}
    settings["budget_steps"] = a.epochs * a.iters
    settings["recipe"] = ("ImageNet MobileNetV2 frozen, linear head (AdamW lr 1e-3, wd 1e-4, cosine) on cached features"
                          if a.model == "frozen" else "ImageNet MobileNetV2 fine-tuned end to end (AdamW, head lr x10, ls 0.1)")

    def flush(complete: bool) -> Path:
        """Write the result so far (after every seed: a run cut short still leaves its figures)."""
        rows = [r for regime in all_rows.values() for r in regime.values()]
        verdicts = {regime: verdict_for(regime, rows_) for regime, rows_ in all_rows.items()}
        settings.update(per_seed=per_seed, seeds_done=done_seeds, complete=complete)
        return C.write_result(C.result(BENCH, a.seeds, rows, ANCHORS, GOAL, settings, verdicts), a.result)

    for regime in a.regimes:
        rows = all_rows[regime] = {name: C.Row(f"{regime}/{name}", False, notes=f"regime {regime}") for name in ARMS if name in a.arms}
        for seed in a.seeds:
            res = run_seed(regime, seed, root, Path(a.work) / regime / f"seed{seed}", a)
            per_seed[f"{regime}/seed{seed}"] = {k: {kk: vv for kk, vv in v.items() if kk != "plan_reasoning"} for k, v in res.items()}
            for name, r in res.items():
                rows[name].add(r["metrics"], r["wall_s"], r["cpu_s"])
                rows[name].extra.setdefault("n_train", []).append(r["n_train"])
                rows[name].extra.setdefault("train_wall_s", []).append(round(r["train_wall_s"], 1))
                if "new_samples" in r:
                    rows[name].extra.setdefault("new_samples", []).append(r["new_samples"])
                if name == "guided":
                    rows[name].extra.setdefault("plan_reasoning", []).append(r["plan_reasoning"])
            done_seeds.setdefault(regime, []).append(seed)
            flush(False)
        print(C.table(list(rows.values()), ["accuracy", "recall_defective"]), file=sys.stderr, flush=True)
    path = flush(True)
    tables = [C.table(list(r.values()), ["accuracy", "recall_defective"]) for r in all_rows.values()]
    verdicts = {regime: verdict_for(regime, rows_) for regime, rows_ in all_rows.items()}
    print("\n\n".join(tables))
    print(json.dumps(verdicts, indent=2))
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
