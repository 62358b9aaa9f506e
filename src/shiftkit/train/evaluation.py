"""Evaluate a checkpoint on a labeled set, or predict on new images; the model rebuilds from its spec.

Predictions CSV (read by `shiftkit analyze --predictions`):
    path,label,predicted,confidence,prob_<class 0>,prob_<class 1>,...
`label` is the true class name (empty when unknown), `predicted` the argmax class name.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shiftkit.device import forward_chunked, resolve_device
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.io import atomic_write_json, atomic_write_text
from shiftkit.train import checkpoint as ckpt
from shiftkit.train.loaders import ImageTensors, dataset_labels, iterate_batches, open_any, scan
from shiftkit.train.metrics import classification_metrics, save_confusion_png


def _labels_on(ds, classes: list[str]) -> list[int] | None:
    labels = dataset_labels(ds)
    if labels is None:
        return None
    names = list(getattr(ds, "classes", []))
    if names == classes:
        return labels
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DatasetError(f"classes {unknown} are not among the model's classes {classes}", getattr(ds, "root", None),
                           "evaluate on data with the training classes")
    return [classes.index(names[y]) for y in labels]


@torch.no_grad()
def run_model(model, ds, info: dict, batch_size: int = 64, device: str | torch.device = "auto", workers: int = 0,
              on_bad: str = "skip", progress: bool = True, labels: list[int] | None = None) -> dict[str, Any]:
    """Probabilities over a dataset: {"probs" (N, C), "paths", "y" (N,) (-1 unknown), "bad" [(path, error)]}."""
    from tqdm import tqdm

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if on_bad == "fail":
        bad = scan(ds, workers, progress)
        if bad:
            raise DatasetError(f"{len(bad)} unreadable image(s): {'; '.join(p for p, _ in bad[:5])}", getattr(ds, "root", None),
                               "fix them or pass --on-bad skip")
    h, w = info["input_size"]
    tds = ImageTensors(ds, (int(h), int(w)), int(info.get("in_channels") or 3), "skip", labels)
    model.to(dev).eval()
    probs, paths, ys, bad = [], [], [], []
    n = len(tds)
    bar = tqdm(total=n, desc="predicting", unit="img", file=sys.stderr, disable=not progress, leave=False)
    for b in iterate_batches(tds, batch_size, workers):
        bad.extend(b["bad"])
        bar.update(len(b["path"]) + len(b["bad"]))
        if b["x"] is None:
            continue
        x = b["x"].to(dev)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        _, z = forward_chunked(model.forward_features, x)
        probs.append(torch.softmax(z.float(), dim=1).cpu())
        paths.extend(b["path"])
        ys.append(b["y"])
    bar.close()
    if not probs:
        raise DatasetError("no decodable image in the data", getattr(ds, "root", None), "check the folder")
    for _, err in bad:
        print(f"shiftkit: skipped unreadable image {err}", file=sys.stderr)
    return {"probs": torch.cat(probs).numpy(), "paths": paths, "y": torch.cat(ys).numpy(), "bad": bad}


def predictions_csv(paths, probs: np.ndarray, classes: list[str], y: np.ndarray | None = None) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["path", "label", "predicted", "confidence", *[f"prob_{c}" for c in classes]])
    pred = probs.argmax(1)
    for i, p in enumerate(paths):
        label = classes[int(y[i])] if y is not None and int(y[i]) >= 0 else ""
        wr.writerow([p, label, classes[int(pred[i])], f"{float(probs[i, pred[i]]):.6f}", *[f"{float(v):.6f}" for v in probs[i]]])
    return buf.getvalue()


def evaluate(model: str | Path, data: Any, out: str | Path | None = None, batch_size: int = 64, device: str = "auto",
             workers: int = 0, on_bad: str = "skip", progress: bool = True) -> dict[str, Any]:
    """accuracy, balanced accuracy, per-class precision/recall/F1 of checkpoint `model` on labeled `data`.

    With `out`: OUT/metrics.json, OUT/predictions.csv, OUT/figures/confusion.png.
    """
    if isinstance(model, (list, tuple)):
        if len(model) > 1:  # ADVENT's ensemble: mean softmax of several segmentation checkpoints
            from shiftkit.train.seg_eval import evaluate_segmentation

            return evaluate_segmentation(list(model), data, out, batch_size, device, workers, progress)
        model = model[0]
    net, info, meta = ckpt.load_model(model, "cpu")
    classes = list(info["classes"])
    if info.get("task") == "segmentation":
        return _evaluate_segmentation(net, info, model, data, out, batch_size, device, workers, progress)
    ds = open_any(data, task="classification", what="--data")
    labels = _labels_on(ds, classes)
    if labels is None:
        raise DatasetError("evaluate needs labeled data (one sub-folder per class)", getattr(ds, "root", data),
                           "use `shiftkit predict` for unlabeled images")
    r = run_model(net, ds, info, batch_size, device, workers, on_bad, progress, labels)
    m = classification_metrics(r["y"].tolist(), r["probs"].argmax(1).tolist(), classes)
    result: dict[str, Any] = {"model": str(model), "data": str(getattr(ds, "root", data)), "classes": classes, **m,
                              "skipped_images": [p for p, _ in r["bad"]]}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "predictions.csv", predictions_csv(r["paths"], r["probs"], classes, r["y"]))
        save_confusion_png(m["confusion_matrix"], classes, out / "figures" / "confusion.png",
                           f"accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}")
        result["out"] = str(out)
        result["predictions"] = str(out / "predictions.csv")
        result["confusion_png"] = str(out / "figures" / "confusion.png")
        atomic_write_json(out / "metrics.json", result)
    return result


def predict(model: str | Path, data: Any, out: str | Path, batch_size: int = 64, device: str = "auto", workers: int = 0,
            on_bad: str = "skip", progress: bool = True) -> dict[str, Any]:
    """Write predictions for every image under `data` to the CSV `out` (see the module doc)."""
    net, info, _ = ckpt.load_model(model, "cpu")
    classes = list(info["classes"])
    ds = open_any(data, what="--data")
    try:
        labels = _labels_on(ds, classes)
    except DatasetError:
        labels = None
    r = run_model(net, ds, info, batch_size, device, workers, on_bad, progress, labels)
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ShiftkitError("--out must name a .csv file", out, "e.g. --out preds.csv")
    atomic_write_text(out, predictions_csv(r["paths"], r["probs"], classes, r["y"] if labels is not None else None))
    pred = r["probs"].argmax(1)
    counts = {c: int((pred == i).sum()) for i, c in enumerate(classes)}
    return {"model": str(model), "data": str(getattr(ds, "root", data)), "out": str(out), "n": int(len(pred)),
            "predicted_counts": counts, "skipped_images": [p for p, _ in r["bad"]]}


@torch.no_grad()
def _evaluate_segmentation(net, info, model, data, out, batch_size, device, workers, progress) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy at the model's input size (masks resized nearest)."""
    from tqdm import tqdm

    from shiftkit.train.metrics import segmentation_metrics

    classes = list(info["classes"])
    k = len(classes)
    ignore = int(info.get("ignore_index") or 255)
    ds = open_any(data, task="segmentation", what="--data")
    from shiftkit.train.seg_data import check_masks

    check_masks(ds, progress, "--data")  # ids outside the classes or a size mismatch: refused, file named
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    h, w = info["input_size"]
    tds = ImageTensors(ds, (int(h), int(w)), int(info.get("in_channels") or 3), "skip", masks=True, ignore_index=ignore)
    net.to(dev).eval()
    cm = torch.zeros(k * k, dtype=torch.long)
    bad = []
    for b in tqdm(iterate_batches(tds, batch_size, workers), desc="evaluating", file=sys.stderr, disable=not progress,
                  leave=False):
        bad.extend(b["bad"])
        if b["x"] is None:
            continue
        _, z = forward_chunked(net.forward_features, b["x"].to(dev))
        pred = z.argmax(1).cpu()
        y = b["y"]
        ok = (y != ignore) & (y >= 0) & (y < k)
        cm += torch.bincount(y[ok] * k + pred[ok], minlength=k * k)
    m = segmentation_metrics(cm.view(k, k).numpy(), classes)
    result: dict[str, Any] = {"model": str(model), "data": str(getattr(ds, "root", data)), "classes": classes,
                              "n": len(tds) - len(bad), **m, "skipped_images": [p for p, _ in bad]}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_confusion_png(m["confusion_matrix"], classes, out / "figures" / "confusion.png", f"mIoU {m['miou']:.3f}")
        result["out"] = str(out)
        atomic_write_json(out / "metrics.json", result)
    return result
