"""Shared pieces of the B1-B3 benchmark scripts: data preparation through shiftkit's builders,
timing, medians over seeds, the side-by-side table, and the result JSON (CONVENTIONS.md form).

Timings: `wall_s` is elapsed time; `cpu_s` is the CPU time the process used (user + system).
On a shared machine wall time is pessimistic; cpu_s / threads approximates the wall time on an
otherwise idle machine, and both are written so that a reader can judge.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT.parent / "runs" / "data"  # gitignored; benchmark images never enter the repo


def prepare_data(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Build (or reuse) benchmark data `name` with `shiftkit data prepare`'s builder; returns the folder."""
    from shiftkit.data.builders import build

    out = Path(root) if root else DATA / name
    build(name, out, seed=seed, progress=sys.stderr.isatty())
    return out


def add_run_args(ap, data: str, out: str, threads: int | None = None) -> None:
    """The options every benchmark script shares: data folder, run folders, result JSON, device, threads."""
    ap.add_argument("--data", default=None, help=f"benchmark folder (default runs/data/{data}; built if missing)")
    ap.add_argument("--out", default=out, help=f"run folders go here (default {out})")
    ap.add_argument("--result", default=None, help="result JSON (default benchmarks/results/<benchmark>.json)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=threads, help="torch CPU threads (default: torch's choice)" if threads is None
                    else f"torch CPU threads (default {threads}: fastest on a busy 2-core machine)")


def setup_run(a, bench: str, data: str | None = None) -> Path:
    """Apply --threads and build (or reuse) the benchmark's data; returns its folder."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    return prepare_data(data or bench, a.data)


class Timer:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def run_seconds(metrics: dict[str, Any], invocation_s: float | None = None) -> float:
    """A training run's time across kills: the engine's wall_s (or the caller's `invocation_s`) covers the
    last invocation only, its epochs_s every epoch, those run before a kill and resume included."""
    wall = metrics.get("wall_s") if invocation_s is None else invocation_s
    return max(float(wall or 0.0), float(metrics.get("epochs_s") or 0.0))


def median_block(values: list[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals) if vals else None, "values": vals,
            "spread": (max(vals) - min(vals)) if vals else None}


@dataclass
class Row:
    """One method's figures over seeds."""

    method: str
    uses_target_labels: bool
    metrics: dict[str, list[float]] = field(default_factory=dict)
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], wall: float, cpu: float | None = None) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(float(v))
        self.wall_s.append(round(float(wall), 2))
        if cpu is not None:
            self.cpu_s.append(round(float(cpu), 2))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "uses_target_labels": self.uses_target_labels,
                               "metrics": {k: median_block(v) for k, v in self.metrics.items()},
                               "wall_s": median_block(self.wall_s)}
        if self.cpu_s:
            out["cpu_s"] = median_block(self.cpu_s)
        if self.notes:
            out["notes"] = self.notes
        out.update(self.extra)
        return out


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    import numpy
    import torch

    import shiftkit

    out = {"shiftkit": shiftkit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import kornia

        out["kornia"] = kornia.__version__
    except Exception:  # kornia is optional for these scripts
        pass
    return out


def result(benchmark: str, seeds: list[int], rows: list[Row], anchors: dict[str, str], goal: dict[str, Any],
           settings: dict[str, Any] | None = None, verdict: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT.parent)] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "seeds": list(seeds),
        "settings": settings or {},
        "rows": [r.as_dict() for r in rows],
        "anchors": anchors,
        "goal": goal,
        "verdict": verdict or {},
    }


def write_result(res: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    from shiftkit.io import atomic_write_json

    path = Path(path) if path else RESULTS / f"{res['benchmark'].replace('-', '_')}.json"
    atomic_write_json(path, res)
    return path


def table(rows: list[Row], metrics: list[str]) -> str:
    """Median (min-max) per metric, side by side, one line per method."""
    head = f"{'method':<34}" + "".join(f"{m:>26}" for m in metrics) + f"{'wall_s':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for m in metrics:
            v = r.metrics.get(m)
            cells.append(f"{statistics.median(v):.4f} ({min(v):.3f}-{max(v):.3f})" if v else "-")
        wall = f"{statistics.median(r.wall_s):.0f}" if r.wall_s else "-"
        tag = r.method + (" [target labels]" if r.uses_target_labels else "")
        lines.append(f"{tag:<34}" + "".join(f"{c:>26}" for c in cells) + f"{wall:>10}")
    return "\n".join(lines)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)


def labeled_copy(bench_root: str | os.PathLike, benchmark: str, split: str = "target", seed: int = 0) -> Path:
    """An imagefolder copy of an unlabeled split with its labels (from the builder's plan), for the
    oracle row only: <ROOT>-<split>-labeled/<class>/<file>, beside the benchmark folder (the
    builder owns ROOT and refuses foreign files in it). Files are copied, not re-encoded."""
    import shutil

    from shiftkit.data.builders import plan as make_plan

    root = Path(bench_root)
    out = root.parent / f"{root.name}-{split}-labeled"
    if (out / ".complete").is_file():
        return out
    sp = next(s for s in make_plan(benchmark, seed).splits if s.name == split)
    tmp = root.parent / f"{root.name}-{split}-labeled.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    for it in sp.items:
        dst = tmp / sp.classes[it.label] / Path(it.path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / split / it.path, dst)
    (tmp / ".complete").write_text("labels from the builder's plan; for the oracle row only\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def fit_once(run_dir: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, Any], float, float]:
    """shiftkit.train.fit in a fresh run folder; returns (fit's result, wall seconds, cpu seconds)."""
    import shutil

    from shiftkit.train import fit

    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with Timer() as t:
        res = fit(out=str(run_dir), **kwargs)
    return res, t.wall, t.cpu


def _join_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the same method (and target-label use) become one: values concatenated, medians
    recomputed (for one method's seeds run in separate processes with the same settings)."""
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], r["uses_target_labels"], r.get("label", ""))
        if key not in out:
            out[key] = json.loads(json.dumps(r))
            continue
        o = out[key]
        for name, block in r["metrics"].items():
            vals = o["metrics"].get(name, {}).get("values", []) + block["values"]
            o["metrics"][name] = median_block(vals)
        for k in ("wall_s", "cpu_s"):
            if k in r:
                o[k] = median_block(o.get(k, {}).get("values", []) + r[k]["values"])
        for k, v in r.items():
            if isinstance(v, list) and isinstance(o.get(k), list):
                o[k] = o[k] + v
    return list(out.values())


def merge_results(paths: list[str | os.PathLike], out: str | os.PathLike, join_rows: bool = False) -> Path:
    """Join result files of one benchmark run as several processes (e.g. methods split across
    two processes): rows are concatenated (join_rows: same-method rows become one, for seeds run
    separately with the same settings), commands listed, seeds unioned; the first file gives the
    rest. Refuses files of different benchmarks."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    if len({d["benchmark"] for d in docs}) != 1:
        raise ValueError("merge_results: files of different benchmarks")
    res = dict(docs[0])
    res["command"] = " ; ".join(d["command"] for d in docs)
    res["seeds"] = sorted({s for d in docs for s in d["seeds"]})
    res["rows"] = _join_rows([r for d in docs for r in d["rows"]]) if join_rows else [r for d in docs for r in d["rows"]]
    res["settings"] = {"runs": [d.get("settings", {}) for d in docs]}
    goal = res.get("goal", {})
    metric = goal.get("metric")
    metric = metric[0] if isinstance(metric, list) else metric
    fair = [r for r in res["rows"] if not r.get("uses_target_labels") and metric in r.get("metrics", {})]
    verdict: dict[str, Any] = {"complete": all(d.get("verdict", {}).get("complete", True) for d in docs)}
    if fair:
        best = max(fair, key=lambda r: r["metrics"][metric]["median"])
        at_least = goal.get("at_least")
        at_least = at_least[0] if isinstance(at_least, list) else at_least
        verdict.update({"best_method_without_target_labels": best["method"], f"{metric}_median": best["metrics"][metric]["median"],
                        "goal_met_on_this_metric": at_least is not None and best["metrics"][metric]["median"] >= at_least})
    res["verdict"] = verdict
    res["date"] = max(d["date"] for d in docs)
    return write_result(res, out)


if __name__ == "__main__":  # python benchmarks/_common.py merge OUT IN1 IN2 ...
    if len(sys.argv) >= 4 and sys.argv[1] in ("merge", "merge-join"):
        print(merge_results(sys.argv[3:], sys.argv[2], join_rows=sys.argv[1] == "merge-join"))
    else:
        print("usage: python benchmarks/_common.py merge|merge-join OUT.json IN1.json IN2.json ...", file=sys.stderr)
        raise SystemExit(2)
