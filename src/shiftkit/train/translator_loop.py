"""The training loop of the unpaired translator (CUT), resumable and deterministic.

Why not `train.engine.Engine`: the engine is built around a classifier `net(x) -> (features,
logits)` with classes, labels, evaluation and label-free selection; a translator has none of
these (two unlabeled image streams, three networks, two optimisers, image samples as its only
"evaluation"). This loop reuses the engine's pieces instead: the run folder
(`train.runfolder.RunFolder`), safetensors checkpoints and the tensors-only training state
(`train.checkpoint`), and the two-phase `adapt.base.Phase` form of a step (`adapt.cut.CUT.phases`).

Exact resume: the images, crops and flips of step k and the patch locations of its NCE loss are a
pure function of (seed, k) (`_step_generator`); the checkpoint holds G, D, F, both Adam states and
the step, so a run killed after any checkpoint and rerun gives the same weights as an
uninterrupted run (tested).

Data: both sets are decoded once (through the data layer), resized so the shorter side is
`load_size` (default round(1.125 * size)) and kept in memory as uint8 when that fits `cache_mb`;
each step takes a random `size` x `size` crop with a random horizontal flip (CUT's
resize-and-crop, 286 -> 256). A larger `load_size` trains on patches at a finer scale (e.g. the
native resolution), and the translator is later applied at that same scale (`load_size`).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftkit.adapt.cut import CUT, CUTSettings
from shiftkit.device import amp_dtype, amp_label, resolve_device
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.train import checkpoint as ckpt
from shiftkit.train.runfolder import RunFolder, read_log

# settings that may differ between a run and its resumption
_RESUME_FREE = {"device", "progress", "log_every", "ckpt_every", "grid_every", "out", "cache_mb", "amp", "channels_last", "threads"}


@dataclass
class TranslatorConfig:
    source: str
    target: str
    out: str
    size: int = 128
    load_size: int = 0  # images are resized so their shorter side is this, then cropped to `size` (0 = round(1.125 * size))
    steps: int = 5000
    batch_size: int = 1
    preset: str = "cut"  # cut | fastcut
    ngf: int = 16
    n_blocks: int = 6
    ndf: int = 32
    nce_layers: list[int] | None = None
    num_patches: int = 256
    lambda_nce: float | None = None
    lambda_gan: float = 1.0
    lr: float = 2e-4
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (CUDA float16) | on (also CPU bfloat16) | off: `shiftkit.device.amp_dtype`
    channels_last: bool = False
    log_every: int = 10
    ckpt_every: int = 200
    grid_every: int = 500
    grid_rows: int = 4
    cache_mb: int = 2048
    progress: bool = True
    max_images: int = 0  # 0 = every image of each set; else a seeded subset
    threads: int = 0  # CPU threads for torch (0 = leave torch's setting); 1 is fastest on a busy machine

    def validate(self) -> None:
        for name in ("size", "steps", "batch_size", "ckpt_every", "log_every", "grid_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ShiftkitError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("grid_every", "max_images", "cache_mb", "threads"):
            if getattr(self, name) < 0:
                raise ShiftkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        amp_dtype(torch.device("cpu"), self.amp)  # validates the mode
        if self.size % 4 or self.size < 32:
            raise ShiftkitError(f"--size must be a multiple of 4 and at least 32, got {self.size}", None, "e.g. 64 or 128")
        if self.load_size and self.load_size < self.size:
            raise ShiftkitError(f"--load-size {self.load_size} is smaller than --size {self.size}", None,
                                "use 0 (1.125 x size) or a value >= --size")
        for name in ("source", "target"):
            if not Path(getattr(self, name)).exists():
                raise DatasetError(f"--{name}: folder not found", getattr(self, name), "check the path")
        out = Path(self.out).resolve()
        for name in ("source", "target"):
            root = Path(getattr(self, name)).resolve()
            if out == root or root in out.parents:
                raise ShiftkitError(f"--out is inside the {name} dataset", self.out, "write the run folder elsewhere")

    def settings(self) -> CUTSettings:
        return CUTSettings(preset=self.preset, ngf=self.ngf, n_blocks=self.n_blocks, ndf=self.ndf,
                           nce_layers=list(self.nce_layers) if self.nce_layers else None, num_patches=self.num_patches,
                           lambda_nce=self.lambda_nce, lambda_gan=self.lambda_gan, lr=self.lr)


# --------------------------------------------------------------------------- data
class ImageBank:
    """The images of one dataset, resized so the shorter side is `load`, decoded once (uint8 cache)."""

    def __init__(self, ds, load: int, channels: int, indices: list[int], cache: bool):
        self.ds, self.load, self.channels, self.indices, self.cache = ds, load, channels, indices, cache
        self._mem: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, k: int) -> torch.Tensor:
        """uint8 (C, h, w), shorter side `load`."""
        if k in self._mem:
            return self._mem[k]
        img = self.ds[self.indices[k]].image
        t = resize_short(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), self.load)
        t = match_channels_u8(t, self.channels)
        if self.cache:
            self._mem[k] = t
        return t


def resize_short(img: torch.Tensor, load: int) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 with the shorter side `load` (antialiased bilinear), aspect kept."""
    h, w = img.shape[-2:]
    s = load / min(h, w)
    nh, nw = max(load, round(h * s)), max(load, round(w * s))
    if (nh, nw) == (h, w):
        return img.contiguous()
    x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def match_channels_u8(t: torch.Tensor, c: int) -> torch.Tensor:
    if t.shape[0] == c:
        return t
    if c == 3:
        return t.expand(3, -1, -1).contiguous()
    return t.float().mean(0, keepdim=True).round_().to(torch.uint8)


def _step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1))
    return g


def sample_batch(bank: ImageBank, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n random images of `bank`, each a random size x size crop, flipped at random -> float [0, 1]."""
    idx = torch.randint(len(bank), (n,), generator=g).tolist()
    out = []
    for k in idx:
        img = bank.get(k)
        h, w = img.shape[-2:]
        y = int(torch.randint(h - size + 1, (), generator=g))
        x = int(torch.randint(w - size + 1, (), generator=g))
        crop = img[:, y : y + size, x : x + size]
        if torch.rand((), generator=g).item() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).float().div_(255.0)


def lr_factor(step: int, total: int) -> float:
    """CUT's schedule: constant for the first half, then linear decay to 0: f = min(1, (T - s) / (T / 2))."""
    half = max(1, total // 2)
    return max(0.0, min(1.0, (total - step) / half))


def _subset(n: int, k: int, seed: int, salt: int) -> list[int]:
    if k <= 0 or k >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, salt])
    return sorted(rng.choice(n, k, replace=False).tolist())


def _open(path: str, task: str | None):
    from shiftkit.train.loaders import open_any

    return open_any(path, task=task)


def _channels_of(ds, n: int = 8) -> int:
    """3 if any of the first few images is RGB, else 1."""
    for i in range(min(n, len(ds))):
        if ds[i].image.shape[2] == 3:
            return 3
    return 1


# --------------------------------------------------------------------------- training
def _config_dict(cfg: TranslatorConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["source"] = str(Path(cfg.source).resolve())
    d["target"] = str(Path(cfg.target).resolve())
    return d


def _check_resume(root: Path, cfg: TranslatorConfig) -> None:
    import json

    old_path = root / "config.json"
    if not old_path.is_file():
        return
    old = json.loads(old_path.read_text()).get("train", {})
    new = _config_dict(cfg)
    diff = [k for k in new if k not in _RESUME_FREE and k in old and old[k] != new[k]]
    if diff:
        raise ShiftkitError(f"this run folder was trained with other settings ({', '.join(diff)})", root,
                            "use a new --out, or rerun with the same settings to resume")


def load_size_of(cfg: TranslatorConfig) -> int:
    return int(cfg.load_size) if cfg.load_size else int(round(cfg.size * 1.125))


def model_info(model: CUT, cfg: TranslatorConfig, channels: int) -> dict[str, Any]:
    return {"spec": model.G.spec, "task": "translation", "train_size": cfg.size, "load_size": load_size_of(cfg), "channels": channels,
            "settings": model.settings.as_dict(), "discriminator": model.D.spec, "source": str(Path(cfg.source).resolve()),
            "target": str(Path(cfg.target).resolve())}


def _save(run: RunFolder, model: CUT, opts: dict, info: dict, step: int, wall: float, losses: dict) -> None:
    d = run.checkpoints
    meta = {"step": step, "train_s": round(wall, 2), "losses": losses}
    ckpt.save_weights(d / "last.safetensors", model.G, info, modules={"D": model.D, "F": model.F}, meta=meta)
    ckpt.save_state(d / "last.pt", {"step": step, "train_s": float(wall),
                                     **{f"opt_{k}": o.state_dict() for k, o in opts.items()}})
    ckpt.write_summary(d / "last.json", {"step": step, "train_s": round(wall, 2), "weights": "last.safetensors", "state": "last.pt"})


def _load(run: RunFolder, model: CUT, opts: dict) -> tuple[int, float]:
    groups, _, _ = ckpt.read_weights(run.checkpoints / "last.safetensors")
    model.G.load_state_dict(groups["model"])
    model.D.load_state_dict(groups["D"])
    model.F.load_state_dict(groups["F"])
    state = ckpt.load_state(run.checkpoints / "last.pt")
    for k, o in opts.items():
        o.load_state_dict(state[f"opt_{k}"])
    return int(state["step"]), float(state.get("train_s", 0.0))


@torch.no_grad()
def sample_grid(model: CUT, images: torch.Tensor, path: Path, step: int, extra: torch.Tensor | None = None) -> str:
    """Rows of (A, G(A)) for fixed source images (and a row of target images for reference)."""
    from shiftkit.report.grid import save_grid

    p = next(model.G.parameters())
    fake = model.G(images.to(p.device)).float().cpu()
    to_u8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # noqa: E731
    rows = [[to_u8(a), to_u8(b)] + ([to_u8(extra[i])] if extra is not None and i < len(extra) else []) for i, (a, b) in enumerate(zip(images, fake, strict=True))]
    titles = ["source A", f"G(A) step {step}"] + (["a target image"] if extra is not None else [])
    ncol = max(len(r) for r in rows)
    rows = [r + [None] * (ncol - len(r)) for r in rows]
    return save_grid(path, rows, titles[:ncol], cell=128)


def train_translator(cfg: TranslatorConfig, after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train CUT as configured (resuming from OUT/checkpoints when present); returns metrics.json's dict.

    `after_step(step)` is called after each finished step (tests use it to interrupt a run).
    """
    cfg.validate()
    old_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, after_step)
    finally:
        torch.set_num_threads(old_threads)


def _train(cfg: TranslatorConfig, after_step: Callable[[int], None] | None) -> dict[str, Any]:
    settings = cfg.settings()
    root = Path(cfg.out)
    _check_resume(root, cfg)
    dev = resolve_device(cfg.device)
    dtype = amp_dtype(dev, cfg.amp)
    torch.manual_seed(cfg.seed)
    src = _open(cfg.source, None)
    tgt = _open(cfg.target, "unlabeled")
    if len(src) == 0 or len(tgt) == 0:
        raise DatasetError("a dataset holds no images", cfg.source if len(src) == 0 else cfg.target, "point at folders with images")
    channels = 3 if 3 in (_channels_of(src), _channels_of(tgt)) else 1
    load = load_size_of(cfg)
    ia, ib = _subset(len(src), cfg.max_images, cfg.seed, 1), _subset(len(tgt), cfg.max_images, cfg.seed, 2)
    fits = (len(ia) + len(ib)) * channels * load * load * 1.5 <= cfg.cache_mb * 2**20  # 1.5: non-square slack
    bank_a, bank_b = ImageBank(src, load, channels, ia, fits), ImageBank(tgt, load, channels, ib, fits)

    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    model = CUT(channels, settings).to(dev)
    opts = model.optimizers()
    run = RunFolder(root)
    info = model_info(model, cfg, channels)
    step, wall0 = 0, 0.0
    if ckpt.exists(run.checkpoints):
        step, wall0 = _load(run, model, opts)
    run.write_config({"command": "translator train", "train": _config_dict(cfg), "settings": settings.as_dict(),
                      "channels": channels, "load_size": load, "device": str(dev), "images": {"source": len(ia), "target": len(ib)},
                      "parameters": {"G": _count(model.G), "D": _count(model.D), "F": _count(model.F)},
                      "amp": amp_label(dtype)})
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype is not None else None
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        model.to(memory_format=fmt)

    # fixed images for the sample grids: evenly spaced source images, centre crops
    k = min(cfg.grid_rows, len(bank_a))
    picks = [int(round(i * (len(bank_a) - 1) / max(1, k - 1))) for i in range(k)]
    grid_a = torch.stack([_center(bank_a.get(i), cfg.size) for i in picks]).float().div(255.0)
    grid_b = torch.stack([_center(bank_b.get(i * len(bank_b) // max(1, k)), cfg.size) for i in range(k)]).float().div(255.0)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc=f"translator {cfg.preset} {cfg.size}px", unit="step", file=sys.stderr,
               disable=not cfg.progress, dynamic_ncols=True)
    recent: dict[str, deque] = {}
    t_start = time.perf_counter()
    last_losses: dict[str, float] = {}
    try:
        while step < cfg.steps:
            g = _step_generator(cfg.seed, step)
            real_a = sample_batch(bank_a, cfg.batch_size, cfg.size, g).to(dev, memory_format=fmt)
            real_b = sample_batch(bank_b, cfg.batch_size, cfg.size, g).to(dev, memory_format=fmt)
            f = lr_factor(step, cfg.steps)
            for o in opts.values():
                for pg in o.param_groups:
                    pg["lr"] = settings.lr * f
            phases, _ = model.phases(real_a, real_b, generator=g, autocast=autocast)
            logs: dict[str, float] = {}
            for ph in phases:
                is_g = "G" in ph.groups
                model.D.requires_grad_(not is_g)
                for name in ph.groups:
                    opts[name].zero_grad(set_to_none=True)
                losses = ph.resolve()
                total = sum(losses.values())
                if not torch.isfinite(total.detach()):
                    raise ShiftkitError(f"the {'/'.join(ph.groups)} loss is not finite at step {step}", root,
                                        "lower --lr, or resume from the last checkpoint")
                scaler.scale(total).backward()
                for name in ph.groups:
                    scaler.step(opts[name])
                logs.update({k2: float(v.detach()) for k2, v in losses.items()})
            scaler.update()
            model.D.requires_grad_(True)
            step += 1
            for k2, v in logs.items():
                recent.setdefault(k2, deque(maxlen=50)).append(v)
            last_losses = {k2: round(float(np.mean(v)), 4) for k2, v in recent.items()}
            bar.update(1)
            bar.set_postfix({k2: f"{v:.3f}" for k2, v in last_losses.items()}, refresh=False)
            wall = wall0 + time.perf_counter() - t_start
            if step % cfg.log_every == 0 or step == cfg.steps:
                run.log({"step": step, **{k2: round(v, 5) for k2, v in logs.items()}, "lr": settings.lr * f, "train_s": round(wall, 2)})
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                _save(run, model, opts, info, step, wall, last_losses)
            if cfg.grid_every and (step % cfg.grid_every == 0 or step == cfg.steps):
                sample_grid(model, grid_a, run.figures / f"samples_{step:06d}.png", step, grid_b)
            if after_step is not None:
                after_step(step)
    finally:
        bar.close()
    wall = wall0 + time.perf_counter() - t_start
    grid = sample_grid(model, grid_a, run.figures / "samples_last.png", step, grid_b)
    log = read_log(root)
    metrics = {
        "steps": step, "size": cfg.size, "batch_size": cfg.batch_size, "preset": cfg.preset, "channels": channels,
        "train_s": round(wall, 2), "s_per_step": round(wall / max(1, step), 4), "device": str(dev),
        "amp": amp_label(dtype),
        "final_losses": last_losses, "log_rows": len(log), "checkpoint": str(run.checkpoints / "last.safetensors"),
        "grid": grid, "parameters": {"G": _count(model.G), "D": _count(model.D), "F": _count(model.F)},
    }
    run.write_metrics(metrics)
    return metrics


def _center(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return img[:, y : y + size, x : x + size]


def _count(m: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in m.parameters()))


# --------------------------------------------------------------------------- loading a trained translator
def translator_file(path: str | Path) -> Path:
    """A run folder -> its checkpoints/last.safetensors; a .safetensors file -> itself."""
    p = Path(path)
    if p.is_dir():
        f = p / "checkpoints" / "last.safetensors"
        if not f.is_file():
            raise ShiftkitError("no trained translator in this folder (checkpoints/last.safetensors)", p,
                                "train one with `shiftkit translator train --out FOLDER`")
        return f
    if not p.is_file():
        raise ShiftkitError("translator not found", p, "pass the run folder of `shiftkit translator train` or its .safetensors")
    return p


def load_translator(path: str | Path, device: str | torch.device = "cpu"):
    """-> (generator in eval mode, info) from a translator run folder or checkpoint."""
    from shiftkit.models.translator import build_translator

    f = translator_file(path)
    groups, info, meta = ckpt.read_weights(f)
    if info.get("task") != "translation":
        raise ShiftkitError("this checkpoint is not a translator", f, "pass the run folder of `shiftkit translator train`")
    g = build_translator(info["spec"])
    try:
        g.load_state_dict(groups["model"])
    except (KeyError, RuntimeError) as exc:
        raise ShiftkitError(f"translator weights do not fit their spec ({str(exc)[:120]})", f, "retrain the translator") from None
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    g.to(dev).eval().requires_grad_(False)
    info = dict(info, step=meta.get("step"), train_s=meta.get("train_s"), file=str(f))
    return g, info
