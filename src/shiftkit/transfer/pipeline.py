"""Streaming A -> A': decode -> transfer -> encode in batches, resumable, shardable by rank.

Memory is bounded by one batch of source images (plus their paired targets) and the prefetch of
the DataLoader workers; target images are decoded on demand, never all at once. Set statistics
(`--reference set`, `pca`) and the nearest-pairing features are built by one streaming pass.

Determinism (kill + rerun = uninterrupted run): the pair of a source image depends only on the
seed and its path (`random`) or on pixel statistics (`nearest`); batches are the fixed slices
[k*B, (k+1)*B) of this rank's index list, so a rerun recomputes a partly-written batch with the
very same neighbours; finished files are skipped through `DatasetWriter.is_done`.

Sharding: under `torchrun` (RANK / WORLD_SIZE set) rank r takes entries i % world == r and writes
its own complete shard dataset `OUT.shards/rank-r-of-w`; rank 0 merges the shards into OUT after a
`torch.distributed` barrier when a process group is initialised, otherwise rerun the same command
with `--finalize` (any single process) once every rank has finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.io import atomic_write_json, atomic_write_text
from shiftkit.transfer.methods import METHODS, REFERENCES, TransferMethod, make_method
from shiftkit.transfer.selection import (
    PAIR_MODES,
    feature_scale,
    pair_nearest,
    stable_hash,
    style_features,
    subset_indices,
)

PAIRS_FILE = "pairs.csv"
PAIRS_HEADER = ["i", "source", "target", "output", "method"]


def _data_api():
    try:
        from shiftkit.data import DatasetWriter, open_dataset
    except ImportError as exc:  # the data layer is written in parallel; say so plainly
        raise ShiftkitError(f"the data layer (shiftkit.data.open_dataset/DatasetWriter) is not available: {exc}") from None
    return open_dataset, DatasetWriter


@dataclass
class TransferConfig:
    source: Path
    target: Path
    out: Path
    method: str = "fda"
    beta: float = 0.01
    reference: str = "image"
    pair: str = "random"
    pair_k: int = 1
    mix: bool = False
    suffix: str | None = None  # default "__<method>" (only used with mix)
    seed: int = 0
    batch_size: int = 16
    workers: int = 0
    device: str = "auto"
    task: str | None = None
    max_targets: int = 0  # 0 = every target image
    figures: Path | None = None  # default OUT.figures beside OUT
    grid_rows: int = 6
    gap: bool = True
    gap_max: int = 300
    on_error: str = "raise"
    progress: bool = True
    finalize: bool = False
    overwrite: bool = False
    rank: int | None = None
    world_size: int | None = None
    translator: Path | None = None  # method "learned": run folder of `shiftkit translator train`

    def __post_init__(self):
        self.source, self.target, self.out = Path(self.source), Path(self.target), Path(self.out)
        if self.translator is not None:
            self.translator = Path(self.translator)
        if self.method == "learned" and self.translator is None:
            raise ShiftkitError("--method learned needs --translator", None, "train one with `shiftkit translator train --out T` and pass --translator T")
        if self.figures is not None:
            self.figures = Path(self.figures)
        if self.method not in METHODS:
            raise ShiftkitError(f"unknown method {self.method!r}", None, f"use one of {', '.join(METHODS)}")
        if self.pair not in PAIR_MODES:
            raise ShiftkitError(f"unknown pairing {self.pair!r}", None, f"use one of {', '.join(PAIR_MODES)}")
        if self.reference not in REFERENCES:
            raise ShiftkitError(f"unknown reference {self.reference!r}", None, f"use one of {', '.join(REFERENCES)}")
        if not (0.0 <= float(self.beta) <= 1.0):
            raise ShiftkitError(f"--beta must be in [0, 1], got {self.beta}", None, "FDA's window is a fraction of the image size, e.g. 0.01")
        for name in ("batch_size", "pair_k"):
            if getattr(self, name) < 1:
                raise ShiftkitError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "max_targets", "gap_max", "grid_rows"):
            if getattr(self, name) < 0:
                raise ShiftkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.on_error not in ("raise", "skip"):
            raise ShiftkitError(f"--on-error must be raise or skip, got {self.on_error!r}")
        if self.suffix is None:
            self.suffix = "__" + self.method.replace("-", "")
        if not self.suffix or "/" in self.suffix or "\\" in self.suffix:
            raise ShiftkitError(f"bad --suffix {self.suffix!r}", None, "use a plain file-name suffix such as __fda")
        if self.figures is None:
            self.figures = self.out.parent / (self.out.name + ".figures")
        if self.rank is None or self.world_size is None:
            self.rank, self.world_size = env_rank()
        if not (0 <= self.rank < self.world_size):
            raise ShiftkitError(f"rank {self.rank} is outside world size {self.world_size}")


def env_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK / WORLD_SIZE environment, (0, 1) otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ShiftkitError("RANK / WORLD_SIZE are not integers", None, "launch with torchrun or unset them") from None
    if world < 1 or not 0 <= rank < world:
        raise ShiftkitError(f"RANK={rank} WORLD_SIZE={world} are inconsistent", None, "launch with torchrun or unset them")
    return rank, world


def output_path(rel: str, mix: bool, suffix: str) -> str:
    """Where the transferred copy of `rel` goes: the same path, or `stem<suffix>.ext` beside it with --mix."""
    if not mix:
        return rel
    head, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    new = f"{stem}{suffix}.{ext}" if dot else f"{name}{suffix}"
    return f"{head}/{new}" if head else new


def shard_dir(out: Path, rank: int, world: int) -> Path:
    return out.parent / f"{out.name}.shards" / f"rank-{rank}-of-{world}"


# --------------------------------------------------------------------------- decoding (worker side)
def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float (C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


class _Items(torch.utils.data.Dataset):
    """Decodes source sample i (and, when the pair is known up front, its target image unless
    only the target's precomputed summary is needed)."""

    def __init__(self, ds, tds, pair_of: Callable[[int], int | None] | None, decode_target: bool = True,
                 cache_bytes: int = 64 << 20):
        self.ds, self.tds, self.pair_of, self.decode_target = ds, tds, pair_of, decode_target
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # decoded targets, LRU, at most cache_bytes
        self._cached = 0

    def _target(self, j: int) -> np.ndarray:
        img = self._cache.get(j)
        if img is not None:
            self._cache.move_to_end(j)
            return img
        img = self.tds[j].image
        if img.nbytes <= self.cache_bytes:
            self._cache[j] = img
            self._cached += img.nbytes
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes
        return img

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            s = self.ds[i]
            j = self.pair_of(i) if self.pair_of is not None else None
            t = self._target(j) if (j is not None and self.decode_target) else None
            return {"i": i, "sample": s, "target_index": j, "target": t, "error": None}
        except ShiftkitError as exc:
            return {"i": i, "sample": None, "target_index": None, "target": None, "error": exc}


def _collate(items):
    return items


class _RandomPair:
    """Picklable pairing function for DataLoader workers: i -> target index by hash of (seed, path)."""

    def __init__(self, paths: list[str], candidates: list[int], seed: int):
        self.paths, self.candidates, self.seed = paths, candidates, seed

    def __call__(self, i: int) -> int:
        return self.candidates[stable_hash(self.seed, self.paths[i]) % len(self.candidates)]


def _loader(items: _Items, batches: list[list[int]], workers: int):
    return torch.utils.data.DataLoader(
        items, batch_sampler=batches, collate_fn=_collate, num_workers=workers,
        prefetch_factor=2 if workers > 0 else None, persistent_workers=False,
    )


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- the run
@dataclass
class _Plan:
    cfg: TransferConfig
    source: Any
    target: Any
    method: TransferMethod
    device: torch.device
    candidates: list[int]
    target_feats: torch.Tensor | None = None
    feat_scale: torch.Tensor | None = None
    summaries: dict[int, Any] | None = None  # target index -> method.target_summary (summarizing methods)
    stats_s: float = 0.0
    errors: list = field(default_factory=list)


def _stream_stats(ds, indices: list[int], fn: Callable[[torch.Tensor, list[int]], None], cfg: TransferConfig, desc: str) -> None:
    """Decode `indices` of `ds` in batches (same-size groups) and hand each float batch to `fn`."""
    if not indices:
        return
    batches = [indices[k : k + cfg.batch_size] for k in range(0, len(indices), cfg.batch_size)]
    bar = _progress(len(indices), cfg.progress, desc)
    try:
        for items in _loader(_Items(ds, None, None), batches, cfg.workers):
            good = []
            for it in items:
                if it["error"] is not None:
                    if cfg.on_error == "raise":
                        raise it["error"]
                    continue
                good.append(it)
            for group in _groups([it["sample"].image for it in good]):
                x = torch.stack([_to_tensor(good[k]["sample"].image) for k in group]).to(_stats_device(cfg))
                fn(x, [good[k]["i"] for k in group])
            bar.update(len(items))
    finally:
        bar.close()


def _stats_device(cfg: TransferConfig) -> torch.device:
    from shiftkit.device import resolve_device

    return resolve_device(cfg.device)


def _groups(images: list[np.ndarray]) -> list[list[int]]:
    """Positions grouped by image shape (H, W, C), in first-seen order: each group is one batched call."""
    groups: dict[tuple, list[int]] = {}
    for k, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(k)
    return list(groups.values())


def _prepare(cfg: TransferConfig) -> _Plan:
    from shiftkit.device import resolve_device

    open_dataset, _ = _data_api()
    src = open_dataset(cfg.source, task=cfg.task)
    tgt = open_dataset(cfg.target, task="unlabeled")  # only its images are used, whatever its format
    if len(src) == 0:
        raise DatasetError("the source dataset holds no images", cfg.source, "point --source at a dataset with images")
    if len(tgt) == 0:
        raise DatasetError("the target dataset holds no images", cfg.target, "point --target at a folder with images")
    out = cfg.out.resolve()
    for name, root in (("source", Path(src.root).resolve()), ("target", Path(tgt.root).resolve())):
        if out == root or root in out.parents:
            raise ShiftkitError(f"--out is inside the {name} dataset", cfg.out, "write the result to a new folder outside both datasets")
    device = resolve_device(cfg.device)
    method = make_method(cfg.method, beta=cfg.beta, reference=cfg.reference, translator=cfg.translator)
    plan = _Plan(cfg, src, tgt, method, device, subset_indices(len(tgt), cfg.max_targets, cfg.seed))
    t0 = time.perf_counter()
    need_feats = method.pairs and cfg.pair == "nearest"
    need_summaries = method.pairs and method.summarizes_targets
    if method.needs_target_stats or need_feats or need_summaries:
        feats: dict[int, torch.Tensor] = {}
        summaries: dict[int, Any] = {}

        def on_target(x: torch.Tensor, idx: list[int]) -> None:
            if method.needs_target_stats:
                method.fit_target(x)
            if need_feats:
                for i, f in zip(idx, style_features(x), strict=True):
                    feats[i] = f
            if need_summaries:
                for i, summ in zip(idx, method.target_summaries(x), strict=True):
                    summaries[i] = summ

        _stream_stats(tgt, plan.candidates, on_target, cfg, "target statistics")
        if need_summaries:
            plan.summaries = summaries
        if need_feats or need_summaries:
            kept = [i for i in plan.candidates if i in (feats if need_feats else summaries)]
            if not kept:
                raise DatasetError("no target image could be decoded", cfg.target, "check the target images")
            plan.candidates = kept
        if need_feats:
            plan.target_feats = torch.stack([feats[i] for i in kept])
            plan.feat_scale = feature_scale(plan.target_feats)
    if method.needs_source_stats:
        _stream_stats(src, list(range(len(src))), lambda x, idx: method.fit_source(x), cfg, "source statistics")
    plan.stats_s = time.perf_counter() - t0
    return plan


def _provenance(plan: _Plan, rank: int, world: int) -> dict:
    cfg = plan.cfg
    return {
        "command": "transfer",
        "source": str(Path(plan.source.root).resolve()),
        "target": str(Path(plan.target.root).resolve()),
        "method": cfg.method,
        "params": plan.method.params(),
        "pair": cfg.pair,
        "pair_k": cfg.pair_k,
        "seed": cfg.seed,
        "mix": cfg.mix,
        "suffix": cfg.suffix if cfg.mix else None,
        "max_targets": cfg.max_targets,
        "pairs_file": PAIRS_FILE,
        "shard": {"rank": rank, "world_size": world},
        "fitted": plan.method.summary(),
        "versions": _versions(),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from shiftkit import __version__

    try:
        kornia_version = version("kornia")  # metadata only: importing kornia costs half a second
    except PackageNotFoundError:  # pragma: no cover
        kornia_version = None
    return {"shiftkit": __version__, "torch": torch.__version__, "kornia": kornia_version, "numpy": np.__version__, "python": platform.python_version()}


def _fingerprint(cfg: TransferConfig) -> str:
    """Hash of every setting that changes the pairs: a stale log of another configuration is never reused."""
    keys = (cfg.method, cfg.beta, cfg.reference, cfg.pair, cfg.pair_k, cfg.mix, cfg.suffix, cfg.seed, cfg.max_targets,
            str(cfg.source.resolve()), str(cfg.target.resolve()), str(cfg.translator.resolve()) if cfg.translator else None)
    return f"{stable_hash(0, repr(keys)):016x}"


def _state_file(cfg: TransferConfig, rank: int, world: int) -> Path:
    out = cfg.out
    return out.parent / f"{out.name}.state" / f"pairs-{_fingerprint(cfg)}-rank-{rank}-of-{world}.jsonl"


def _read_pairs_log(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            rows[row["source"]] = row
    return rows


def _transfer_shard(plan: _Plan, dest: Path, rank: int, world: int, after_batch: Callable[[int], None] | None = None) -> dict:
    """Write this rank's share of A' (and A with --mix) into `dest`; returns counts."""
    cfg, src, tgt, method = plan.cfg, plan.source, plan.target, plan.method
    _, DatasetWriter = _data_api()
    mine = [i for i in range(len(src)) if i % world == rank]
    batches = [mine[k : k + cfg.batch_size] for k in range(0, len(mine), cfg.batch_size)]
    paths = src.paths()
    tpaths = tgt.paths()
    pair_of = _RandomPair(paths, plan.candidates, cfg.seed) if (method.pairs and cfg.pair == "random") else None
    log_path = _state_file(cfg, rank, world)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pairs = {r["source"]: dict(r, i=int(r["i"])) for r in _read_pairs_csv(dest / PAIRS_FILE) if "i" in r}
    pairs.update(_read_pairs_log(log_path))

    @lru_cache(maxsize=64)  # nearest pairing reuses targets; 64 images bound the memory
    def target_tensor(j: int) -> torch.Tensor:
        return _u8_tensor(tgt[j].image)

    counts = {"written": 0, "skipped_done": 0, "errors": 0, "images": len(mine)}
    t0 = time.perf_counter()
    with DatasetWriter(dest, like=src, provenance=_provenance(plan, rank, world), overwrite=cfg.overwrite) as w:
        def done(i: int) -> bool:
            return w.is_done(output_path(paths[i], cfg.mix, cfg.suffix)) and (not cfg.mix or w.is_done(paths[i]))

        todo = [b for b in batches if not all(done(i) for i in b)]
        counts["skipped_done"] = sum(len(b) for b in batches) - sum(len(b) for b in todo)
        bar = _progress(len(mine), cfg.progress, f"transfer {cfg.method}" + (f" [rank {rank}/{world}]" if world > 1 else ""))
        bar.update(counts["skipped_done"])
        log = open(log_path, "a", encoding="utf-8")
        # Encoding (PNG/JPEG compression releases the GIL) runs on a thread beside the decode and
        # transfer of the next batch; samples are committed in submission order, so the output and
        # its journal are the same as a serial run's. At most two batches are in flight.
        n_threads = encode_threads()
        pool = ThreadPoolExecutor(max_workers=n_threads) if n_threads > 0 else None
        pending: deque = deque()

        def commit(batch: tuple[int, list, list[dict], int]) -> None:
            bno, prepared, new_rows, n_items = batch
            for p in prepared:
                w.commit(p.result() if pool is not None else p)
            if new_rows:
                log.write("".join(json.dumps(r) + "\n" for r in new_rows))
                log.flush()
                os.fsync(log.fileno())
            bar.update(n_items)
            if after_batch is not None:  # batch `bno` is stored
                after_batch(bno)

        def prepare(sample, path=None):
            return pool.submit(w.prepare, sample, path) if pool is not None else w.prepare(sample, path)

        try:
            items_ds = _Items(src, tgt, pair_of, decode_target=plan.summaries is None)
            for bno, items in enumerate(_loader(items_ds, todo, cfg.workers)):
                good = []
                for it in items:
                    if it["error"] is not None:
                        if cfg.on_error == "raise":
                            raise it["error"]
                        counts["errors"] += 1
                        plan.errors.append(str(it["error"]))
                        continue
                    good.append(it)
                results = _run_batch(plan, good, target_tensor)
                prepared, new_rows = [], []
                for it, (img, j) in zip(good, results, strict=True):
                    s, rel = it["sample"], it["sample"].path
                    out_rel = output_path(rel, cfg.mix, cfg.suffix)
                    if cfg.mix and not w.is_done(rel):
                        prepared.append(prepare(s))
                    if not w.is_done(out_rel):
                        prepared.append(prepare(s.with_image(img), out_rel if cfg.mix else None))
                        counts["written"] += 1
                    row = {"i": it["i"], "source": rel, "target": tpaths[j] if j is not None else "", "output": out_rel, "method": cfg.method}
                    if pairs.get(rel) != row:
                        pairs[rel] = row
                        new_rows.append(row)
                pending.append((bno, prepared, new_rows, len(items)))
                while len(pending) > 1:
                    commit(pending.popleft())
            while pending:
                commit(pending.popleft())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            log.close()
            bar.close()
    counts["transfer_s"] = time.perf_counter() - t0
    # the manifest of which target styled which source, in dataset order
    rows = sorted((r for r in pairs.values() if r["i"] % world == rank), key=lambda r: r["i"])
    _write_pairs_csv(dest / PAIRS_FILE, rows)
    log_path.unlink(missing_ok=True)  # pairs.csv now holds every row
    try:
        log_path.parent.rmdir()
    except OSError:
        pass
    return counts


def encode_threads() -> int:
    """Threads that encode outputs beside the main loop: one per spare core, at most 4
    (SHIFTKIT_ENCODE_THREADS overrides; 0 encodes in the main loop)."""
    env = os.environ.get("SHIFTKIT_ENCODE_THREADS")
    if env is not None and env.strip().isdigit():
        return int(env)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _write_pairs_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(PAIRS_HEADER)
    for r in rows:
        wr.writerow([r[k] for k in PAIRS_HEADER])
    atomic_write_text(path, buf.getvalue())


def _u8_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> uint8 (C, H, W) view."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def _run_batch(plan: _Plan, good: list[dict], target_tensor) -> list[tuple[np.ndarray, int | None]]:
    """Transfer decoded items; returns (uint8 image, target index or None) per item, in order."""
    cfg, method, dev = plan.cfg, plan.method, plan.device
    results: list[tuple[np.ndarray, int | None] | None] = [None] * len(good)
    for group in _groups([it["sample"].image for it in good]):
        x = torch.from_numpy(np.stack([good[k]["sample"].image for k in group])).to(dev).permute(0, 3, 1, 2)
        js: list[int | None] = [None] * len(group)
        targets = summaries = None
        if method.pairs:
            if cfg.pair == "nearest":
                keys = [good[k]["sample"].path for k in group]
                pos = pair_nearest(style_features(x.float().div(255.0)), plan.target_feats, keys, cfg.seed, cfg.pair_k, plan.feat_scale)
                js = [plan.candidates[p] for p in pos]
            else:
                js = [good[k]["target_index"] for k in group]
            if plan.summaries is not None:
                summaries = [plan.summaries[j] for j in js]
            elif cfg.pair == "nearest":
                targets = [target_tensor(j).to(dev) for j in js]
            else:
                targets = [_u8_tensor(good[k]["target"]).to(dev) for k in group]
        with torch.no_grad():
            y = method.apply_uint8(x, targets=targets, summaries=summaries, target_keys=js if targets is not None else None)
        for k, img, j in zip(group, y.permute(0, 2, 3, 1).cpu().numpy(), js, strict=True):
            results[k] = (img, j)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- finalise: merge, grid, gap
def _merge_shards(cfg: TransferConfig, source, world: int) -> None:
    """Merge rank shards into OUT (same format as A), in dataset order; shards are kept until it succeeds."""
    open_dataset, DatasetWriter = _data_api()
    shards = [shard_dir(cfg.out, r, world) for r in range(world)]
    missing = [str(s) for s in shards if not s.is_dir()]
    if missing:
        raise ShiftkitError(f"{len(missing)} of {world} shards are not finished ({missing[0]} ...)", None, "run every rank to completion, then rerun with --finalize")
    opened = [open_dataset(s, task=source.task.value) for s in shards]
    index = [{p: k for k, p in enumerate(d.paths())} for d in opened]
    prov = json.loads((shards[0] / "shiftkit.json").read_text()).get("provenance", {}) if (shards[0] / "shiftkit.json").is_file() else {}
    prov = dict(prov, shard={"merged_from": world})
    rows = []
    with DatasetWriter(cfg.out, like=source, provenance=prov, overwrite=cfg.overwrite) as w:
        for i, rel in enumerate(source.paths()):
            r = i % world
            names = ([rel] if cfg.mix else []) + [output_path(rel, cfg.mix, cfg.suffix)]
            for name in names:
                if w.is_done(name) or name not in index[r]:
                    continue
                s = opened[r][index[r][name]]
                w.write(s, path=name) if name != rel else w.write(s)
        for sh in shards:
            rows += _read_pairs_csv(sh / PAIRS_FILE)
    order = {p: i for i, p in enumerate(source.paths())}
    rows.sort(key=lambda r: order.get(r["source"], len(order)))
    _write_pairs_csv(cfg.out / PAIRS_FILE, rows)
    import shutil

    shutil.rmtree(cfg.out.parent / f"{cfg.out.name}.shards", ignore_errors=True)  # merged: the shards are copies


def _read_pairs_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_grid(cfg: TransferConfig, source, target, out_ds, n_rows: int) -> str | None:
    """Before/after grid (source, chosen target, result) for `n_rows` evenly spaced sources."""
    from shiftkit.report.grid import save_grid

    rows_csv = {r["source"]: r for r in _read_pairs_csv(cfg.out / PAIRS_FILE)}
    if n_rows == 0 or not rows_csv:
        return None
    out_index = {p: k for k, p in enumerate(out_ds.paths())}
    tindex = {p: k for k, p in enumerate(target.paths())}
    n = len(source)
    picks = sorted({int(round(k * (n - 1) / max(1, n_rows - 1))) for k in range(min(n_rows, n))})
    rows, labels = [], []
    for i in picks:
        rel = source.paths()[i]
        r = rows_csv.get(rel)
        if r is None or r["output"] not in out_index:
            continue
        tgt_img = target[tindex[r["target"]]].image if r["target"] in tindex else None
        rows.append([source[i].image, tgt_img, out_ds[out_index[r["output"]]].image])
        labels.append(f"{rel} <- {r['target'] or 'set statistics'}")
    if not rows:
        return None
    return save_grid(cfg.figures / "grid.png", rows, ["source", "target", f"result ({cfg.method})"], labels)


def gap_report(cfg: TransferConfig, source, target, out_ds) -> dict | None:
    """Gap score (domain-classifier accuracy, 0.5 = indistinguishable) and per-property KS drift,
    of A vs B and of A' vs B, on seeded subsets of at most `gap_max` images per set.

    Hook: uses `shiftkit.analysis.drift.gap_score` / `property_drift` with
    `shiftkit.analysis.properties.compute_properties`; returns None when they are not installed.
    """
    try:
        from shiftkit.analysis.drift import gap_score, property_drift
        from shiftkit.analysis.properties import compute_properties
    except ImportError:
        return None
    out_index = {p: k for k, p in enumerate(out_ds.paths())}
    a_idx = subset_indices(len(source), cfg.gap_max, cfg.seed, "gap-a")
    b_idx = subset_indices(len(target), cfg.gap_max, cfg.seed, "gap-b")
    a2_idx = [out_index[o] for o in (output_path(source.paths()[i], cfg.mix, cfg.suffix) for i in a_idx) if o in out_index]
    n = min(len(a_idx), len(b_idx), len(a2_idx))
    if n < 4:
        return {"skipped": f"too few images for a cross-validated gap score ({n} per set, need 4)"}
    folds = min(5, n)
    kw = dict(features=True, cache=False, progress=cfg.progress, workers=cfg.workers, device=cfg.device)
    ta = compute_properties(source.subset(a_idx), desc="properties A", **kw)
    tb = compute_properties(target.subset(b_idx), desc="properties B", **kw)
    ta2 = compute_properties(out_ds.subset(a2_idx), desc="properties A'", **kw)
    before = gap_score(ta, tb, folds=folds, seed=cfg.seed)
    after = gap_score(ta2, tb, folds=folds, seed=cfg.seed)
    drift_before = {r["property"]: r["ks"] for r in property_drift(ta, tb)}
    drift_after = {r["property"]: r["ks"] for r in property_drift(ta2, tb)}
    return {
        "n_per_set": n,
        "folds": folds,
        "before": {k: v["accuracy"] for k, v in before.items()},
        "after": {k: v["accuracy"] for k, v in after.items()},
        "ks_before": drift_before,
        "ks_after": {k: drift_after[k] for k in drift_before if k in drift_after},
    }


# --------------------------------------------------------------------------- public entry point
def run_transfer(cfg: TransferConfig, after_batch: Callable[[int], None] | None = None) -> dict:
    """Run `shiftkit transfer` as configured; returns the summary that the CLI prints and saves.

    `after_batch(k)` is called after each written batch (tests use it to interrupt a run).
    """
    t_start = time.perf_counter()
    open_dataset, _ = _data_api()
    _bounded_malloc()
    rank, world = cfg.rank, cfg.world_size
    result: dict[str, Any] = {"out": str(cfg.out), "method": cfg.method, "seed": cfg.seed, "rank": rank, "world_size": world}
    if cfg.finalize:
        source = open_dataset(cfg.source, task=cfg.task)
        target = open_dataset(cfg.target, task="unlabeled")
        if world > 1 or any((cfg.out.parent / f"{cfg.out.name}.shards").glob("rank-*")):
            world = world if world > 1 else _shard_world(cfg.out)
            _merge_shards(cfg, source, world)
        return _finish(cfg, source, target, result, t_start)
    plan = _prepare(cfg)
    result["stats_s"] = round(plan.stats_s, 3)
    dest = cfg.out if world == 1 else shard_dir(cfg.out, rank, world)
    counts = _transfer_shard(plan, dest, rank, world, after_batch)
    result.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in counts.items()})
    result["error_messages"] = plan.errors[:20]
    if world > 1:
        own_group = _maybe_init_group()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            try:
                torch.distributed.barrier()
                if rank == 0:
                    _merge_shards(cfg, plan.source, world)
                torch.distributed.barrier()
            finally:
                if own_group:
                    torch.distributed.destroy_process_group()
        else:
            result["note"] = f"shard {rank}/{world} written to {dest}; when every rank is done run the same command once with --finalize"
            result["wall_s"] = round(time.perf_counter() - t_start, 3)
            return result
        if rank != 0:
            result["note"] = f"rank {rank}/{world}: shard done; rank 0 merged the shards into {cfg.out}"
            result["wall_s"] = round(time.perf_counter() - t_start, 3)
            return result
    return _finish(cfg, plan.source, plan.target, result, t_start)


def _bounded_malloc(threshold: int = 256 << 10) -> bool:
    """Pin glibc's mmap threshold so that every freed batch buffer goes back to the OS.

    glibc raises the threshold dynamically after big frees; from then on the decoded images and
    tensors of each batch come from the heap, which fragments and makes the peak RSS grow with
    the number of batches (measured: +30% for 10x the images). With a fixed threshold the peak
    stays flat (+4%). No-op where glibc's mallopt is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _maybe_init_group() -> bool:
    """Under torchrun (MASTER_ADDR set) start a CPU `gloo` group for the final barrier; True if we started it."""
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized() or "MASTER_ADDR" not in os.environ:
        return False
    import datetime

    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
    return True


def _shard_world(out: Path) -> int:
    names = [p.name for p in (out.parent / f"{out.name}.shards").glob("rank-*-of-*")]
    worlds = {int(n.rsplit("-", 1)[1]) for n in names}
    if len(worlds) != 1:
        raise ShiftkitError(f"cannot tell the world size from the shards ({sorted(names)})", out, "pass WORLD_SIZE, or delete stale shards")
    return worlds.pop()


def _finish(cfg: TransferConfig, source, target, result: dict, t_start: float) -> dict:
    open_dataset, _ = _data_api()
    out_ds = open_dataset(cfg.out, task=source.task.value)
    result["output_images"] = len(out_ds)
    result["pairs_csv"] = str(cfg.out / PAIRS_FILE)
    result["grid"] = write_grid(cfg, source, target, out_ds, cfg.grid_rows)
    result["gap"] = gap_report(cfg, source, target, out_ds) if cfg.gap else None
    result["wall_s"] = round(time.perf_counter() - t_start, 3)
    atomic_write_json(cfg.figures / "transfer.json", {"config": _config_dict(cfg), "result": result})
    return result


def _config_dict(cfg: TransferConfig) -> dict:
    d = asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
