"""The one training loop for every method (see shiftkit.adapt.base for the Method protocol).

The engine owns devices, seeds, data order, optimisers and schedules, mixed precision, logging,
checkpoints and exact resume, per-epoch evaluation and label-free selection, and torchrun.

Exact resume: the batch order of every stream is a pure function of (seed, stream, epoch)
(`loaders.batch_order`); a checkpoint stores each stream's position (batches consumed), the
optimiser/scheduler/scaler/RNG states and the method's state, so a run killed at any step and
resumed replays the same batches, augmentations and dropout masks as an uninterrupted run.

Distributed (torchrun, WORLD_SIZE > 1): one process per device, each reads every
world_size-th batch; gradients of every updated parameter (model and method modules alike) are
averaged with all_reduce before each optimiser step. That is what DDP does, done explicitly so
that methods with extra modules and several phases need no wrapping. Rank 0 writes the run folder.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftkit.adapt.base import Method, StepInfo
from shiftkit.augment.functional import random_photometric
from shiftkit.device import amp_dtype, amp_label, forward_chunked, resolve_device
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.train import checkpoint as ckpt
from shiftkit.train.loaders import (
    ImageTensors,
    TensorRows,
    balanced_class_weights,
    balanced_weights,
    batch_order,
    dataset_labels,
    dataset_paths,
    iterate_batches,
    make_loader,
    open_any,
    scan,
)
from shiftkit.train.metrics import classification_metrics
from shiftkit.train.runfolder import RunFolder
from shiftkit.train.schedule import SCHEDULES
from shiftkit.train.selection import SELECT_MODES, Selector, im_score, snd_score

OPTIMIZERS = ("adamw", "sgd")
BACKBONE_NAMES = ("small_cnn", "mobilenet_v2", "efficientnet_lite0")
# settings that may differ between a run and its resumption
_RESUME_FREE = {"resume", "workers", "device", "progress", "log_every", "ckpt_every", "out"}


@dataclass
class TrainConfig:
    """Every setting of a training run (recorded in config.json). See `fit` for meanings."""

    source: str | None = None
    target: str | None = None
    target_test: str | None = None
    source_val: str | None = None
    out: str = "runs/train"
    task: str = "classification"  # classification | segmentation (pixels are samples)
    backbone: str = "small_cnn"
    arch: str | None = None  # segmentation: deeplabv2 | unet (default: unet for small_cnn, else deeplabv2)
    pretrained: bool = True
    bottleneck: int | None = None
    dropout: float = 0.0
    in_channels: int | None = None
    init: str | None = None
    method: str = "source-only"
    method_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-2
    schedule: str = "cosine"
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    source_jitter: float = 0.0  # recolour the labelled source images each step (augment.functional.random_photometric)
    source_invert: float = 0.0  # and invert each with this probability (light-on-dark <-> dark-on-light)
    size: int | None = None
    freeze_stages: int = 0
    freeze_bn: bool = False
    freeze_backbone: bool = False
    balanced_sampling: bool = False
    class_weights: Any = None  # None | "balanced" | list of floats
    iters_per_epoch: int | None = None
    select: str | None = None
    select_score: str = "im"  # im | snd
    select_max: int = 2000
    eval_batch_size: int = 128
    eval_every: int = 1  # evaluate (and select) every N epochs; the last epoch always
    amp: str = "auto"  # auto (CUDA float16) | on (also CPU bfloat16) | off
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    resume: bool = False
    ckpt_every: int | None = None
    log_every: int = 20
    on_bad: str = "skip"
    feature_cache: str | None = None  # folder for cached features (default: shiftkit cache)
    progress: bool = True

    def validate(self) -> None:
        def bad(what: str, fix: str) -> None:
            raise ShiftkitError(what, None, fix)

        if self.task not in ("classification", "segmentation"):
            bad(f"--task {self.task} is not supported by `train` yet", "use --task classification or segmentation")
        if self.task == "segmentation" and self.freeze_backbone:
            bad("--freeze-backbone (cached pooled features) is for classification", "use --freeze-stages for segmentation")
        if self.epochs < 1:
            bad(f"--epochs must be >= 1, got {self.epochs}", "pass a positive number")
        if self.batch_size < 2:
            bad(f"--batch-size must be >= 2 (BatchNorm), got {self.batch_size}", "pass 2 or more")
        if not self.lr > 0 or not self.head_lr_mult > 0:
            bad(f"--lr and head lr multiplier must be > 0, got {self.lr}, {self.head_lr_mult}", "pass positive values")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown --optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}", f"use one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}", "e.g. 0.1")
        for flag, v in (("--source-jitter", self.source_jitter), ("--source-invert", self.source_invert)):
            if not 0.0 <= v <= 1.0:
                bad(f"{flag} must be in [0, 1], got {v}", "e.g. --source-jitter 0.3 --source-invert 0.5")
        if (self.source_jitter or self.source_invert) and self.freeze_backbone:
            bad("--source-jitter/--source-invert recolour images, but --freeze-backbone trains on cached features",
                "drop --freeze-backbone, or the recolouring")
        if self.weight_decay < 0:
            bad(f"--weight-decay must be >= 0, got {self.weight_decay}", "e.g. 0.01")
        if self.select is not None and self.select not in SELECT_MODES:
            bad(f"unknown --select {self.select!r}", f"use one of {', '.join(SELECT_MODES)}")
        if self.select == "target-test" and not self.target_test:
            bad("--select target-test needs --target-test", "give --target-test or use --select label-free")
        if self.select == "source-val" and not self.source_val:
            bad("--select source-val needs --source-val", "give --source-val")
        if self.select == "label-free" and not self.target:
            bad("--select label-free needs an unlabeled --target", "give --target or use --select last")
        if self.select_score not in ("im", "snd"):
            bad(f"unknown selection score {self.select_score!r}", "use im or snd")
        if self.on_bad not in ("skip", "fail"):
            bad(f"--on-bad must be skip or fail, got {self.on_bad!r}", "use skip or fail")
        if self.amp not in ("auto", "on", "off"):
            bad(f"amp must be auto, on or off, got {self.amp!r}", "use auto")
        if self.iters_per_epoch is not None and self.iters_per_epoch < 1:
            bad(f"--iters-per-epoch must be >= 1, got {self.iters_per_epoch}", "pass a positive number")
        if self.eval_every < 1:
            bad(f"eval_every must be >= 1, got {self.eval_every}", "pass a positive number of epochs")
        if self.ckpt_every is not None and self.ckpt_every < 1:
            bad(f"--ckpt-every must be >= 1, got {self.ckpt_every}", "pass a positive number of steps")
        if self.size is not None and self.size < 8:
            bad(f"--size must be >= 8, got {self.size}", "e.g. 28 for digits, 224 for ImageNet backbones")
        if self.freeze_stages < 0:
            bad(f"--freeze-stages must be >= 0, got {self.freeze_stages}", "pass 0 or more")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            bad(f"--class-weights must be 'balanced' or numbers, got {self.class_weights!r}", "use balanced")


class _Net(nn.Module):
    """net(x) -> (features, logits) over images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_features(x)


class _HeadNet(nn.Module):
    """net(features) -> (features after bottleneck, logits): training on cached backbone features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        m = self.model
        f = m.bottleneck(x)
        return f, m.head(m.dropout(f))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Cursor:
    """A stream's position (batches consumed); batches come from `batch_order`, so resume is exact."""

    def __init__(self, name: str, dataset, batch_size: int, seed: int, workers: int, weights=None, rank: int = 0,
                 world: int = 1, on_bad: Callable | None = None):
        self.name, self.dataset, self.batch_size, self.seed = name, dataset, batch_size, seed
        self.workers, self.weights, self.rank, self.world = workers, weights, rank, world
        self.position = 0
        self.on_bad = on_bad
        self._epoch = None
        self._it = None
        self.per_epoch = len(self._batches(0))
        if self.per_epoch == 0:
            raise DatasetError(f"the {name} set has fewer images than one batch", None, "lower --batch-size")

    def _batches(self, epoch: int) -> list[list[int]]:
        return batch_order(len(self.dataset), self.batch_size, self.seed, epoch, self.name, True, True, self.weights,
                           self.rank, self.world)

    def next(self) -> dict:
        for _ in range(1000):
            epoch, offset = divmod(self.position, self.per_epoch)
            if self._it is None or self._epoch != epoch:
                batches = self._batches(epoch)[offset:]
                loader = make_loader(self.dataset, batches, self.workers, self.seed + epoch)
                self._it, self._epoch = iter(loader), epoch
            b = next(self._it)
            self.position += 1
            if b["bad"] and self.on_bad is not None:
                self.on_bad(b["bad"])
            if b["x"] is not None and len(b["x"]) >= 2:
                return b
        raise DatasetError(f"the {self.name} set yields no decodable batch", None, "run `shiftkit validate` on it")

    def seek(self, position: int) -> None:
        self.position = int(position)
        self._it = None


class Engine:
    """Build with a TrainConfig (and optionally a ready model / Method), then `run()`."""

    def __init__(self, cfg: TrainConfig, model: nn.Module | None = None, method: Method | None = None,
                 hooks: dict[str, Callable] | None = None):
        cfg.validate()
        self.cfg = cfg
        self.hooks = dict(hooks or {})
        self._given_model, self._given_method = model, method
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.bad_images: dict[str, str] = {}
        self.datasets: dict[str, Any] = {}
        self.streams: dict[str, Any] = {}

    # --- what methods may ask ------------------------------------------------------------------
    def stream_size(self, name: str) -> int:
        return len(self.streams[name])

    @torch.no_grad()
    def infer(self, stream: str = "target", max_samples: int | None = None,
              model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Features, probabilities, labels (-1 unknown) and indices over a whole stream, eval mode;
        by the engine's model, or by another `model` with the same input (a teacher) when given."""
        ds = self.streams[stream]
        if max_samples is not None and len(ds) > max_samples:
            g = torch.Generator().manual_seed(self.cfg.seed + 99)
            idx = sorted(torch.randperm(len(ds), generator=g)[:max_samples].tolist())
            ds = torch.utils.data.Subset(ds, idx)
        net = self.net if model is None else _Net(model)
        net.eval()
        feats, probs, ys, index = [], [], [], []
        workers = 0 if isinstance(self.streams[stream], TensorRows) else self.cfg.workers
        for b in iterate_batches(ds, self.cfg.eval_batch_size, workers):
            if b["bad"]:
                self._report_bad(b["bad"])
            if b["x"] is None:
                continue
            with self._autocast():
                f, z = forward_chunked(net, self._to_input(b["x"]))
            feats.append(f.float().cpu())
            probs.append(torch.softmax(z.float(), dim=1).cpu())
            ys.append(b["y"])
            index.append(b["index"])
        if not probs:
            raise DatasetError(f"no decodable image in the {stream} set")
        return {"features": torch.cat(feats), "probs": torch.cat(probs), "y": torch.cat(ys), "index": torch.cat(index)}

    # --- set-up -------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.rank == 0 and self.cfg.progress:
            print(msg, file=sys.stderr)

    def _report_bad(self, bad: list[tuple[str, str]]) -> None:
        for path, err in bad:
            if path not in self.bad_images:
                self.bad_images[path] = err
                if self.rank == 0:
                    print(f"shiftkit train: skipped unreadable image {err}", file=sys.stderr)
                    self.run.log({"event": "bad_image", "path": path, "error": err})

    @property
    def use_amp(self) -> bool:
        return self.amp_dtype is not None

    def _autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return torch.autocast(device_type="cpu", enabled=False)

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4 and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _open_data(self) -> None:
        cfg = self.cfg
        for key, what in (("source", "--source"), ("target", "--target"), ("target_test", "--target-test"),
                          ("source_val", "--source-val")):
            value = getattr(cfg, key)
            if value is None:
                continue
            task = None if key == "target" else cfg.task
            self.datasets[key] = open_any(value, task=task, what=what)
        self.ignore_index = 255

    def _classes(self, init_info: dict | None) -> list[str]:
        src = self.datasets.get("source")
        if src is not None and self.cfg.task == "segmentation":
            names = list(getattr(src, "classes", []) or [])
            ids = list(getattr(src, "class_ids", None) or range(len(names)))
            if not ids:
                raise DatasetError("the source set declares no classes", cfg_path(self.cfg.source), "add classes.json/classes.txt")
            by_id = dict(zip(ids, names, strict=True))
            self.ignore_index = int(getattr(src, "ignore_index", None) or 255)
            return [str(by_id.get(i, i)) for i in range(max(ids) + 1)]
        if src is not None:
            classes = list(getattr(src, "classes", []) or [])
            if len(classes) < 2:
                raise DatasetError("the source set needs at least 2 classes (one sub-folder per class)", cfg_path(self.cfg.source),
                                   "lay it out as SOURCE/<class>/<image>")
            return classes
        if init_info is not None:
            return list(init_info["classes"])
        raise ShiftkitError("no --source and no --init checkpoint: the classes are unknown", None, "give --source")

    def _label_map(self, key: str) -> list[int] | None:
        """Labels of a labeled set mapped onto the training classes by name."""
        ds = self.datasets.get(key)
        if key == "target" or self.cfg.task == "segmentation":
            return None  # the unlabeled stream never carries labels; masks are read per sample
        labels = dataset_labels(ds) if ds is not None else None
        if labels is None:
            return None
        names = list(getattr(ds, "classes", []))
        if names == self.classes:
            return labels
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise DatasetError(f"{key.replace('_', '-')} has classes the model does not know: {missing}",
                               getattr(ds, "root", None), f"use the source classes {self.classes}")
        remap = [self.classes.index(n) for n in names]
        return [remap[y] for y in labels]

    def _build_model(self, init_info) -> nn.Module:
        cfg = self.cfg
        if self._given_model is not None:
            return self._given_model
        from shiftkit.models import build_model, default_weights

        if init_info is not None:
            model, _, _ = ckpt.load_model(cfg.init)
            return model
        if cfg.backbone not in BACKBONE_NAMES:
            raise ShiftkitError(f"unknown --backbone {cfg.backbone!r}", None, f"use one of {', '.join(BACKBONE_NAMES)}")
        if cfg.task == "segmentation":
            arch = cfg.arch or ("unet" if cfg.backbone == "small_cnn" else "deeplabv2")
            if arch == "unet":
                return build_model({"arch": "unet", "num_classes": self.num_classes, "in_channels": cfg.in_channels or self._source_channels()})
            if arch != "deeplabv2":
                raise ShiftkitError(f"unknown segmentation --arch {arch!r}", None, "use deeplabv2 or unet")
            bbs: dict[str, Any] = {"name": cfg.backbone}
            if cfg.backbone == "mobilenet_v2":
                bbs["output_stride"] = 8
            weights = "imagenet" if cfg.pretrained and default_weights(cfg.backbone) else None
            return build_model({"arch": "deeplabv2", "backbone": bbs, "num_classes": self.num_classes}, weights=weights)
        bb: dict[str, Any] = {"name": cfg.backbone}
        if cfg.backbone == "small_cnn":
            bb["in_channels"] = cfg.in_channels or self._source_channels()
        weights = "imagenet" if cfg.pretrained and default_weights(cfg.backbone) else None
        spec = {"arch": "classifier", "backbone": bb, "num_classes": len(self.classes), "bottleneck": cfg.bottleneck,
                "dropout": cfg.dropout}
        return build_model(spec, weights=weights)

    def _source_channels(self) -> int:
        ds = self.datasets.get("source") or self.datasets.get("target")
        for i in range(min(len(ds), 20)):
            try:
                return int(ds[i].image.shape[2])
            except ShiftkitError:
                continue
        return 3

    def _model_info(self) -> dict[str, Any]:
        m = self.model
        norm = getattr(m, "normalization", None)
        return {
            "spec": getattr(m, "spec", {}),
            "classes": self.classes,
            "input_size": [self.size, self.size],
            "in_channels": self.channels,
            "normalization": norm.as_dict() if hasattr(norm, "as_dict") else None,
            "task": self.cfg.task,
            "ignore_index": self.ignore_index if self.cfg.task == "segmentation" else None,
        }

    def _make_streams(self) -> None:
        cfg = self.cfg
        keys = [k for k in ("source", "target", "target_test", "source_val") if k in self.datasets]
        labels = {k: self._label_map(k) for k in keys}
        if cfg.on_bad == "fail":
            for k in keys:
                bad = scan(self.datasets[k], cfg.workers, cfg.progress and self.rank == 0)
                if bad:
                    listing = "; ".join(f"{p}" for p, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
                    raise DatasetError(f"{len(bad)} unreadable image(s) in {k.replace('_', '-')}: {listing}",
                                       getattr(self.datasets[k], "root", None),
                                       "delete or re-export them, or pass --on-bad skip")
        if cfg.task == "segmentation":
            from shiftkit.train.seg_data import check_masks

            for k in keys:
                if k != "target":  # masks with ids outside the classes or of the wrong size: refused up front
                    check_masks(self.datasets[k], cfg.progress and self.rank == 0, k.replace("_", "-"))
        if cfg.freeze_backbone:
            for k in keys:
                self.streams[k] = self._cached_features(k, labels[k])
        else:
            for k in keys:
                masks = cfg.task == "segmentation" and k != "target"
                self.streams[k] = ImageTensors(self.datasets[k], (self.size, self.size), self.channels, "skip", labels[k],
                                               masks=masks, ignore_index=self.ignore_index)
        self.labels = labels

    def _cached_features(self, key: str, labels: list[int] | None) -> TensorRows:
        from shiftkit.models.features import extract_features

        ds = self.datasets[key]
        kwargs = dict(size=self.size, batch_size=self.cfg.eval_batch_size, device=self.device,
                      cache_dir=self.cfg.feature_cache, progress=self.cfg.progress and self.rank == 0)
        keep = list(range(len(ds)))
        try:
            fs = extract_features(self.model.backbone, ds, **kwargs)
        except ShiftkitError:
            bad = scan(ds, self.cfg.workers, False)
            self._report_bad(bad)
            bad_paths = {p for p, _ in bad}
            keep = [i for i, p in enumerate(dataset_paths(ds)) if p not in bad_paths]
            fs = extract_features(self.model.backbone, ds.subset(keep), **kwargs)
        y = torch.tensor([labels[i] for i in keep], dtype=torch.long) if labels is not None else None
        return TensorRows(torch.from_numpy(np.ascontiguousarray(fs.features)), y, list(fs.paths))

    def _optimizers(self) -> None:
        cfg = self.cfg
        m = self.model
        if hasattr(m, "param_groups"):
            groups = m.param_groups(cfg.lr, cfg.head_lr_mult)
        else:
            groups = [{"name": "model", "params": [p for p in m.parameters() if p.requires_grad], "lr": cfg.lr}]
        opt_groups = {"model": groups}
        for name, mod in self.method_modules.items():
            opt_groups[name] = [{"name": name, "params": [p for p in mod.parameters() if p.requires_grad],
                                 "lr": cfg.lr * cfg.head_lr_mult}]
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        own = getattr(self.method, "optimizer_options", lambda: {})() or {}  # method-set module optimisers
        for name, gs in opt_groups.items():
            gs = [g for g in gs if g["params"]]
            if not gs:
                continue
            if name in own and own[name].get("optimizer") == "adam":
                o = own[name]
                for g in gs:
                    g["lr"] = float(o["lr"])
                opt = torch.optim.Adam(gs, lr=float(o["lr"]), betas=tuple(o.get("betas", (0.9, 0.999))),
                                       weight_decay=float(o.get("weight_decay", 0.0)))
            elif cfg.optimizer == "adamw":
                opt = torch.optim.AdamW(gs, lr=cfg.lr, weight_decay=cfg.weight_decay)
            else:
                opt = torch.optim.SGD(gs, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                                      weight_decay=cfg.weight_decay)
            self.optimizers[name] = opt
        if "model" not in self.optimizers:
            raise ShiftkitError("nothing to train: every model parameter is frozen", None, "lower --freeze-stages")
        fn = SCHEDULES[cfg.schedule]
        total, warm = self.total_steps, self.warmup

        def factor(step: int) -> float:
            return fn(step, total, warm, cfg.min_lr_ratio)

        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def setup(self) -> None:
        cfg = self.cfg
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        self.run = RunFolder(cfg.out, enabled=self.rank == 0)
        ckpt_dir = self.run.checkpoints
        self.resuming = cfg.resume and ckpt.exists(ckpt_dir)
        if not cfg.resume and ckpt.exists(ckpt_dir):
            raise ShiftkitError("the run folder already holds a training run", cfg.out,
                                "add --resume to continue it, or choose a new --out")
        seed_everything(cfg.seed)
        self._open_data()
        init_info = None
        if cfg.init:
            _, init_info, _ = ckpt.read_weights(cfg.init)
        self.classes = self._classes(init_info)
        self.num_classes = len(self.classes)
        self.model = self._build_model(init_info)
        bb = getattr(self.model, "backbone", None)
        norm = getattr(self.model, "normalization", None)
        init_size = (init_info or {}).get("input_size") or [None]
        self.size = int(cfg.size or init_size[0] or getattr(norm, "input_size", 224) or 224)
        self.channels = int(getattr(norm, "in_channels", 3) or 3)
        if cfg.freeze_backbone:
            if bb is None or not hasattr(bb, "freeze"):
                raise ShiftkitError("--freeze-backbone needs a shiftkit Classifier", None, "drop --freeze-backbone")
            bb.freeze(None)
        elif cfg.freeze_stages:
            bb.freeze(cfg.freeze_stages)
        if cfg.freeze_bn and bb is not None:
            bb.set_bn_eval(True)
        self.model.to(self.device)
        if cfg.channels_last and not cfg.freeze_backbone:
            self.model.to(memory_format=torch.channels_last)
        self.feature_dim = int(getattr(self.model, "feature_dim", 0) or 0)
        self._make_streams()
        self.net = _HeadNet(self.model) if cfg.freeze_backbone else _Net(self.model)

        # method
        if self._given_method is not None:
            self.method = self._given_method
        else:
            from shiftkit.adapt.registry import build_method

            cw = self._class_weights()
            extra = {"ignore_index": self.ignore_index} if cfg.task == "segmentation" else {}
            self.method = build_method(cfg.method, label_smoothing=cfg.label_smoothing, class_weights=cw,
                                       **extra, **(cfg.method_options or {}))
        for s in self.method.streams:
            if s not in self.streams:
                raise ShiftkitError(f"method {self.method.name} reads the {s} stream, but no --{s} was given", None,
                                    f"give --{s}")
        self.method.setup(self)
        self.method_modules = {k: v.to(self.device) for k, v in self.method.modules().items()}
        if set(self.method_modules) & {"model", "method"}:
            raise ShiftkitError("a method module may not be named 'model' or 'method'")

        # data order
        lead = "source" if "source" in self.method.streams else self.method.streams[0]
        weights = None
        if cfg.balanced_sampling and lead == "source":
            weights = balanced_weights(self.streams["source"].labels.tolist() if isinstance(self.streams["source"], TensorRows)
                                       else self.labels["source"], self.num_classes)
        self.cursors = {
            s: _Cursor(s, self.streams[s], cfg.batch_size, cfg.seed,
                       0 if isinstance(self.streams[s], TensorRows) else cfg.workers, weights if s == lead else None,
                       self.rank, self.world, self._report_bad)
            for s in self.method.streams
        }
        self.lead = lead
        self.iters_per_epoch = int(cfg.iters_per_epoch or self.cursors[lead].per_epoch)
        self.total_steps = self.iters_per_epoch * cfg.epochs
        self.warmup = int(cfg.warmup_steps if cfg.warmup_steps is not None else min(self.iters_per_epoch, self.total_steps // 20))
        self._optimizers()
        self.selector = Selector(cfg.select or self._default_select(), cfg.task)
        self.global_step, self.start_epoch = 0, 0
        self._sums, self._count = {}, 0
        self.history: list[dict] = []

    def _class_weights(self) -> torch.Tensor | None:
        cw = self.cfg.class_weights
        if cw is None:
            return None
        if cw == "balanced":
            src = self.streams["source"]
            return balanced_class_weights(src.labels if isinstance(src, TensorRows) else self.labels["source"], self.num_classes)
        w = torch.as_tensor([float(v) for v in cw])
        if len(w) != self.num_classes or (w < 0).any():
            raise ShiftkitError(f"--class-weights needs {self.num_classes} non-negative numbers, got {list(cw)}", None,
                                "one weight per class, in class order")
        return w

    def _default_select(self) -> str:
        if "target" in self.streams:
            return "label-free"
        if "source_val" in self.streams:
            return "source-val"
        return "last"

    # --- checkpoints ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        d = _cfg_dict(self.cfg)
        d.update({
            "resolved": {
                "device": str(self.device), "amp": amp_label(self.amp_dtype),
                "size": self.size, "in_channels": self.channels,
                "classes": self.classes, "iters_per_epoch": self.iters_per_epoch, "total_steps": self.total_steps,
                "warmup_steps": self.warmup, "select": self.selector.mode, "method": self.method.config(),
                "world_size": self.world, "model_spec": getattr(self.model, "spec", None),
                "num_threads": torch.get_num_threads(),
                "sizes": {k: len(v) for k, v in self.streams.items()},
            }
        })
        return d

    def _save_last(self, epoch: int, step_in_epoch: int) -> None:
        if self.rank != 0:
            return
        d = self.run.checkpoints
        ckpt.save_weights(d / "last.safetensors", self.model, self._model_info(), self.method_modules,
                          self.method.state_dict(), {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step})
        state = {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "cursors": {k: c.position for k, c in self.cursors.items()},
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "selector": {k: v for k, v in self.selector.state().items() if v is not None},
            "bad_images": dict(self.bad_images),
            "epoch_sums": dict(self._sums) if step_in_epoch else {},
            "epoch_count": self._count if step_in_epoch else 0,
        }
        ckpt.save_state(d / "last.pt", state)
        ckpt.write_summary(d / "last.json", {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
                                             "weights": "last.safetensors", "state": "last.pt"})

    def _load_last(self) -> tuple[int, int]:
        d = self.run.checkpoints
        import json

        old = json.loads((self.run.root / "config.json").read_text()) if (self.run.root / "config.json").is_file() else {}
        now = _cfg_dict(self.cfg)
        diff = [k for k in now if k not in _RESUME_FREE and k in old and old[k] != now[k]]
        if diff:
            raise ShiftkitError(f"--resume with different settings: {', '.join(diff)}", self.cfg.out,
                                "resume with the original settings, or start a new --out")
        groups, _, meta = ckpt.read_weights(d / "last.safetensors")
        self.model.load_state_dict(groups["model"])
        for k, mod in self.method_modules.items():
            mod.load_state_dict(groups.get(k, {}))
        self.method.load_state_dict(groups.get("method", {}))
        state = ckpt.load_state(d / "last.pt")
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.scaler.load_state_dict(state["scaler"])
        for k, c in self.cursors.items():
            c.seek(state["cursors"][k])
        self.selector.load(state.get("selector", {}))
        self.bad_images.update(state.get("bad_images", {}))
        self.global_step = int(state["global_step"])
        self._sums, self._count = dict(state.get("epoch_sums", {})), int(state.get("epoch_count", 0))
        self.history = [r for r in _read_epochs(self.run.root) if r["epoch"] < state["epoch"]]
        ckpt.set_rng_state(state["rng"])
        return int(state["epoch"]), int(state["step_in_epoch"])

    # --- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _segmentation_epoch(self) -> dict[str, Any]:
        """mIoU on labeled sets (pixel confusion, ignore_index skipped); label-free IM over target pixels,
        streamed: IM = H(mean p) - mean H(p) over every 4th pixel in each direction."""
        from shiftkit.adapt.losses import entropy
        from shiftkit.train.metrics import segmentation_metrics

        out: dict[str, Any] = {}
        self.net.eval()
        k = self.num_classes
        for key in ("target_test", "source_val", "target"):
            if key not in self.streams:
                continue
            cm = torch.zeros(k * k, dtype=torch.long)
            psum, hsum, npx = torch.zeros(k, dtype=torch.double), 0.0, 0
            for b in iterate_batches(self.streams[key], self.cfg.eval_batch_size, self.cfg.workers):
                if b["bad"]:
                    self._report_bad(b["bad"])
                if b["x"] is None:
                    continue
                with self._autocast():
                    _, z = forward_chunked(self.net, self._to_input(b["x"]))
                if key == "target":
                    p = torch.softmax(z.float()[:, :, ::4, ::4], dim=1).movedim(1, -1).reshape(-1, k).double().cpu()
                    psum += p.sum(0)
                    hsum += float(entropy(p).sum())
                    npx += p.shape[0]
                    continue
                pred = z.argmax(1).cpu()
                y = b["y"]
                ok = (y != self.ignore_index) & (y >= 0) & (y < k)
                cm += torch.bincount(y[ok] * k + pred[ok], minlength=k * k)
            if key == "target":
                if npx:
                    out["select_im"] = float(entropy(psum / npx, dim=0) - hsum / npx)
                continue
            m = segmentation_metrics(cm.view(k, k).numpy(), self.classes)
            out.update({f"{key}_{n}": v for n, v in m.items() if n != "confusion_matrix"})
        return out

    def evaluate_epoch(self, epoch: int) -> dict[str, Any]:
        if self.cfg.task == "segmentation":
            return self._segmentation_epoch()
        out: dict[str, Any] = {}
        for key in ("target_test", "source_val"):
            if key in self.streams and self.labels.get(key) is not None:
                r = self.infer(key)
                ok = r["y"] >= 0
                m = classification_metrics(r["y"][ok].tolist(), r["probs"][ok].argmax(1).tolist(), self.classes)
                out.update({f"{key}_{k}": v for k, v in m.items() if k != "confusion_matrix"})
                out[f"{key}_confusion_matrix"] = m["confusion_matrix"]
        if "target" in self.streams:
            # label-free: reads predictions and features only, never r["y"]
            r = self.infer("target", self.cfg.select_max)
            out["select_im"] = im_score(r["probs"])
            if self.cfg.select_score == "snd":
                out["select_snd"] = snd_score(r["features"])
            pred = r["probs"].argmax(1)
            out["target_predicted_share"] = (torch.bincount(pred, minlength=self.num_classes).float() / len(pred)).tolist()
        return out

    # --- the loop --------------------------------------------------------------------------------
    def _train_step(self, epoch: int) -> dict[str, float]:
        batch = {}
        for s, c in self.cursors.items():
            b = c.next()
            batch[s] = {"x": self._to_input(b["x"]), "y": b["y"].to(self.device), "index": b["index"]}
            if b["x"].dtype == torch.uint8:
                batch[s]["x"] = batch[s]["x"].float().div_(255.0)
        if "source" in batch and (self.cfg.source_jitter or self.cfg.source_invert):  # labels never move
            # draws from the global CPU generator, which checkpoints carry: a resumed run recolours identically
            batch["source"]["x"] = random_photometric(batch["source"]["x"], self.cfg.source_jitter,
                                                      invert=self.cfg.source_invert)
        self.net.train()
        for m in self.method_modules.values():
            m.train()
        info = StepInfo(self.global_step, epoch, self.total_steps, self.device)
        record: dict[str, float] = {}
        with self._autocast():
            phases = self.method.phases(self.net, batch, info)
        for i, ph in enumerate(phases):
            with self._autocast():
                losses = ph.resolve()
            total = sum(v.float() for v in losses.values())
            if not torch.isfinite(total):
                raise ShiftkitError(f"loss became {total.item()} at step {self.global_step} ({', '.join(losses)})", None,
                                    "lower --lr, add --grad-clip, or check the data")
            for o in self.optimizers.values():
                o.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            opts = [self.optimizers[g] for g in ph.groups if g in self.optimizers]
            for o in opts:
                self._sync_grads(o)
                if self.cfg.grad_clip:
                    self.scaler.unscale_(o)
                    torch.nn.utils.clip_grad_norm_([p for g in o.param_groups for p in g["params"]], self.cfg.grad_clip)
                self.scaler.step(o)
            for k, v in losses.items():
                record[k] = float(v.detach())
            record.update({k: float(v) for k, v in ph.logs.items()})
            if len(phases) > 1:
                record[f"loss_phase{i}"] = float(total.detach())
            else:
                record["loss"] = float(total.detach())
        self.scaler.update()
        for s in self.schedulers.values():
            s.step()
        self.global_step += 1
        return record

    def _sync_grads(self, opt: torch.optim.Optimizer) -> None:
        if self.world <= 1:
            return
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world)

    def _broadcast(self, params: bool = False) -> None:
        """Rank 0's buffers (BatchNorm statistics), and parameters when asked, to every rank."""
        if self.world <= 1:
            return
        mods = [self.model, *self.method_modules.values()]
        for m in mods:
            for t in list(m.buffers()) + (list(m.parameters()) if params else []):
                torch.distributed.broadcast(t.data, 0)

    def run_training(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.time()
        self.setup()
        start_epoch, start_step = 0, 0
        if self.resuming:
            start_epoch, start_step = self._load_last()
            self._log(f"resuming {cfg.out} at epoch {start_epoch + 1}, step {start_step}")
            self.run.log({"event": "resume", "epoch": start_epoch, "step_in_epoch": start_step, "global_step": self.global_step})
        else:
            self.run.write_config(self.config_dict())
        self._broadcast(params=True)
        from tqdm import tqdm

        for epoch in range(start_epoch, cfg.epochs):
            self.method.on_epoch_start(self)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                self._sums, self._count = {}, 0
            sums = self._sums
            t0 = time.time()
            bar = tqdm(total=self.iters_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                       disable=not (cfg.progress and self.rank == 0), leave=False)
            for step_in_epoch in range(first, self.iters_per_epoch):
                rec = self._train_step(epoch)
                for k, v in rec.items():
                    sums[k] = sums.get(k, 0.0) + v
                self._count += 1
                bar.update(1)
                if cfg.log_every and self.global_step % cfg.log_every == 0:
                    lr = {k: o.param_groups[-1]["lr"] for k, o in self.optimizers.items()}
                    self.run.log({"event": "step", "epoch": epoch, "step": self.global_step, **rec, "lr": lr})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(rec.items())[:3]})
                done = step_in_epoch + 1
                if cfg.ckpt_every and self.global_step % cfg.ckpt_every == 0 and done < self.iters_per_epoch:
                    self._save_last(epoch, done)
                if "step_end" in self.hooks:
                    self.hooks["step_end"](self, self.global_step)
            bar.close()
            self._broadcast()
            train_s = time.time() - t0
            evaluate_now = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            metrics = self.evaluate_epoch(epoch) if evaluate_now else {}
            record = {"event": "epoch", "epoch": epoch, "step": self.global_step,
                      "train": {k: v / max(1, self._count) for k, v in sums.items()},
                      "lr": {k: o.param_groups[-1]["lr"] for k, o in self.optimizers.items()},
                      "train_s": round(train_s, 3), "eval_s": round(time.time() - t0 - train_s, 3), **metrics}
            best = self.selector.update(epoch, metrics) if evaluate_now else False
            record["selected"] = best
            self.history.append(record)
            self.run.log(record)
            if best and self.rank == 0:
                ckpt.save_weights(self.run.checkpoints / "best.safetensors", self.model, self._model_info(), None, None,
                                  {"epoch": epoch, "select": self.selector.mode, "metrics": _summary(metrics)})
            self._save_last(epoch + 1, 0)
            self._log(_epoch_line(epoch, cfg.epochs, record))
            if "epoch_end" in self.hooks:
                self.hooks["epoch_end"](self, epoch)
        return self._finish(time.time() - t_start)

    def _finish(self, wall: float) -> dict[str, Any]:
        best_epoch = self.selector.best_epoch
        chosen = next((r for r in self.history if r["epoch"] == best_epoch), self.history[-1] if self.history else {})
        last = self.history[-1] if self.history else {}
        result = {
            "out": str(self.run.root),
            "checkpoint": str(self.run.checkpoints / "best.safetensors"),
            "method": self.method.name,
            "select": self.selector.mode,
            "selected_epoch": best_epoch,
            "uses_target_labels": self.selector.mode == "target-test" or getattr(self.method, "uses_target_labels", False),
            "selected": _summary(chosen),
            "last": _summary(last),
            "history": [{"epoch": r["epoch"], **{k: v for k, v in _summary(r).items() if not k.startswith("train")},
                         "train_loss": r.get("train", {}).get("loss")} for r in self.history],
            "skipped_images": sorted(self.bad_images),
            "wall_s": round(wall, 3),  # this invocation only: a resumed run's earlier epochs are in epochs_s
            "epochs_s": round(sum(r.get("train_s", 0.0) + r.get("eval_s", 0.0) for r in self.history), 3),
        }
        for k, v in _summary(chosen).items():
            if k.startswith(("target_test_", "source_val_", "select_")):
                result[k] = v
        self.run.write_metrics(result)
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
        return result


def _cfg_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-able settings; datasets given as objects are recorded by their repr."""
    import json

    out = {}
    for k in cfg.__dataclass_fields__:
        v = getattr(cfg, k)
        if k in ("source", "target", "target_test", "source_val") and v is not None and not isinstance(v, str):
            v = repr(v)
        out[k] = v
    return json.loads(json.dumps(out, default=str))


def _summary(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step",)}


def _epoch_line(epoch: int, epochs: int, record: dict) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {record['train'].get('loss', float('nan')):.4f}"]
    for k in ("target_test_accuracy", "target_test_balanced_accuracy", "target_test_miou", "source_val_accuracy",
              "source_val_miou", "select_im"):
        if k in record:
            parts.append(f"{k} {record[k]:.4f}")
    if record.get("selected"):
        parts.append("*")
    return "  ".join(parts)


def _read_epochs(root: Path) -> list[dict]:
    from shiftkit.train.runfolder import read_log

    seen: dict[int, dict] = {}
    for r in read_log(root):
        if r.get("event") == "epoch":
            seen[int(r["epoch"])] = r
    return [seen[k] for k in sorted(seen)]


def cfg_path(p):
    return p if isinstance(p, (str, os.PathLike)) else None


def fit(source=None, target=None, *, model: nn.Module | None = None, method: Method | str = "source-only",
        hooks: dict[str, Callable] | None = None, **settings: Any) -> dict[str, Any]:
    """Train (and adapt) a classifier; the Python face of `shiftkit train`.

    source: labeled folder or Dataset (class sub-folders); target: unlabeled folder (adaptation);
    target_test: labeled target folder, scoring only; source_val: labeled source validation.
    method: a name (`source-only`, `dann`, `cdan`, `cdan+e`, `mcc`, `self-training`, combinations
    such as `dann+mcc`) or a Method object. model: a ready nn.Module with forward_features (else
    built from backbone/pretrained/bottleneck). Any TrainConfig field can be given by name.
    Returns the figures of metrics.json (selected epoch, last epoch, history, run folder).
    """
    fields = TrainConfig.__dataclass_fields__
    unknown = [k for k in settings if k not in fields]
    if unknown:
        raise ShiftkitError(f"unknown fit() settings: {', '.join(unknown)}", None, f"known: {', '.join(sorted(fields))}")
    given_method = method if isinstance(method, Method) else None
    cfg = TrainConfig(
        source=_as_str(source), target=_as_str(target),
        method=given_method.name if given_method else str(method),
        **{k: (_as_str(v) if k in ("target_test", "source_val", "out", "init") else v) for k, v in settings.items()},
    )
    engine = Engine(cfg, model=model, method=given_method, hooks=hooks)
    return engine.run_training()


def _as_str(v):
    if v is None:
        return None
    if isinstance(v, (str, os.PathLike)):
        return os.fspath(v)
    return v
