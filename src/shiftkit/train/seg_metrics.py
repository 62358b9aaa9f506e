"""Segmentation metrics: batched confusion matrices (one bincount), per-class IoU, mIoU, pixel accuracy.

Pixels whose true label is the ignore index (255) are left out, as in Cityscapes scoring.
`SegMeter` accumulates the confusion matrix over batches so a whole test set never sits in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = 255


def seg_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """M[i, j] = #pixels of true class i predicted j, over every labelled pixel of the batch (int64, C x C).

    pred, target: integer tensors of one shape (e.g. (N, H, W)). Pixels with target == ignore_index
    are skipped; any other target id outside [0, C) is an error (a mask that does not fit the classes).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target holds ids outside [0, {num_classes}) other than {ignore_index}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"pred holds ids outside [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) = M_cc / (row_c + col_c - M_cc); NaN for a class absent from both."""
    m = confusion.double()
    tp = torch.diagonal(m)
    union = m.sum(1) + m.sum(0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def seg_metrics(confusion: torch.Tensor, classes: Sequence[str] | None = None) -> dict:
    """miou (mean IoU over classes present in truth or prediction), pixel_accuracy = trace / sum,
    mean_accuracy (mean per-class recall over classes present), and iou_<class> per class (None if absent)."""
    m = confusion.double()
    c = m.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}x{c} confusion matrix")
    iou = iou_per_class(confusion)
    present = ~torch.isnan(iou)
    total = float(m.sum())
    support = m.sum(1)
    recall = torch.diagonal(m)[support > 0] / support[support > 0]
    out: dict = {
        "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "pixel_accuracy": float(torch.diagonal(m).sum() / total) if total else 0.0,
        "mean_accuracy": float(recall.mean()) if recall.numel() else 0.0,
        "pixels": int(total),
    }
    for i, name in enumerate(names):
        out[f"iou_{name}"] = None if not bool(present[i]) else float(iou[i])
    return out


class SegMeter:
    """Accumulates a confusion matrix over batches: meter.update(logits_or_pred, mask); meter.compute()."""

    def __init__(self, num_classes: int, classes: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.classes = list(classes) if classes is not None else None
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: (N, H, W) class ids or (N, C, H, W) scores (argmax taken); target: (N, H, W)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.confusion += seg_confusion(pred.detach(), target.detach(), self.num_classes, self.ignore_index).cpu()

    def compute(self) -> dict:
        out = seg_metrics(self.confusion, self.classes)
        out["confusion_matrix"] = self.confusion.tolist()
        return out
