"""Evaluate one segmentation checkpoint, or an ensemble of several (ADVENT's MinEnt + AdvEnt), on labeled masks.

The ensemble averages the members' softmax probabilities: p = (1/M) sum_m softmax(G_m(x)).
Members must share classes and task; each sees the images at its own recorded input size, and the
probabilities are compared at the first member's size. Writes, with `out`: metrics.json,
figures/confusion.png and figures/predictions.png (image | ground truth | prediction | entropy).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shiftkit.device import forward_chunked, resolve_device
from shiftkit.errors import ShiftkitError
from shiftkit.io import atomic_write_json


def load_members(paths: Sequence[str | Path], device: torch.device) -> tuple[list, list[dict]]:
    from shiftkit.train import checkpoint as ckpt

    nets, infos = [], []
    for p in paths:
        net, info, _ = ckpt.load_model(p, "cpu")
        if info.get("task") != "segmentation":
            raise ShiftkitError(f"{p} is a {info.get('task', 'classification')} model, not segmentation", p,
                                "ensembles are for segmentation checkpoints")
        if infos and list(info["classes"]) != list(infos[0]["classes"]):
            raise ShiftkitError(f"{p} has classes {info['classes']}, the first model {infos[0]['classes']}", p,
                                "ensemble models trained on the same classes")
        nets.append(net.to(device).eval())
        infos.append(info)
    return nets, infos


@torch.no_grad()
def evaluate_segmentation(models: Sequence[str | Path], data: Any, out: str | Path | None = None, batch_size: int = 64,
                          device: str = "auto", workers: int = 0, progress: bool = True, figures: int = 8) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of one checkpoint or the mean probabilities of several."""
    from tqdm import tqdm

    from shiftkit.train.loaders import open_any
    from shiftkit.train.seg_data import SegTensors, check_masks, seg_batches
    from shiftkit.train.seg_metrics import SegMeter

    if not models:
        raise ShiftkitError("no --model given", None, "pass one checkpoint, or several for an ensemble")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    nets, infos = load_members(models, dev)
    classes = list(infos[0]["classes"])
    ignore = int(infos[0].get("ignore_index") or 255)
    ds = open_any(data, task="segmentation", what="--data")
    check_masks(ds, progress, "--data")
    h, w = (int(v) for v in infos[0]["input_size"])
    tds = SegTensors(ds, (h, w), int(infos[0].get("in_channels") or 3), "skip", classes=classes)
    meter = SegMeter(len(classes), classes, ignore)
    bad: list = []
    shown: dict[str, list] = {"images": [], "probs": [], "masks": []}
    for b in tqdm(seg_batches(tds, batch_size, workers), desc="evaluating", file=sys.stderr, disable=not progress, leave=False):
        bad.extend(b["bad"])
        if b["x"] is None:
            continue
        x = b["x"].to(dev)
        p = None
        for net, info in zip(nets, infos, strict=True):
            size = tuple(int(v) for v in info["input_size"])
            xi = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            pi = torch.softmax(forward_chunked(net, xi).float(), dim=1)
            if pi.shape[-2:] != (h, w):
                pi = F.interpolate(pi, size=(h, w), mode="bilinear", align_corners=False)
            p = pi if p is None else p + pi
        p = (p / len(nets)).cpu()
        meter.update(p, b["y"])
        if len(shown["images"]) < figures:
            k = figures - len(shown["images"])
            shown["images"] += list(b["x"][:k])
            shown["probs"].append(p[:k])
            shown["masks"] += list(b["y"][:k])
    m = meter.compute()
    result: dict[str, Any] = {"model": [str(p) for p in models] if len(models) > 1 else str(models[0]),
                              "ensemble": len(models) > 1, "data": str(getattr(ds, "root", data)), "classes": classes,
                              "n": len(tds) - len(bad), **m, "skipped_images": [p for p, _ in bad]}
    if out is not None:
        from shiftkit.report.seg_figures import save_prediction_grid
        from shiftkit.train.metrics import save_confusion_png

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_confusion_png(m["confusion_matrix"], classes, out / "figures" / "confusion.png", f"mIoU {m['miou']:.3f}")
        if shown["images"]:
            save_prediction_grid(out / "figures" / "predictions.png", shown["images"], torch.cat(shown["probs"]),
                                 shown["masks"], len(classes))
            result["predictions_png"] = str(out / "figures" / "predictions.png")
        result["out"] = str(out)
        atomic_write_json(out / "metrics.json", result)
    return result
