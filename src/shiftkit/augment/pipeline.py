"""Stream a dataset through an augmentation plan into a new dataset of the same format.

Which source image the k-th new sample of a class comes from, and every random strength applied
to it, depend only on (seed, class, source path, copy number): a rerun after a kill, or on another
machine, writes byte-identical files, and the writer's journal lets it skip what is done.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from shiftkit.augment import functional as AF
from shiftkit.augment.policy import OpSpec, Plan, balance_counts
from shiftkit.data import Boxes, DatasetWriter, Sample, Task
from shiftkit.data.formats.dataset import Dataset
from shiftkit.data.tensors import images_to_tensor, tensor_to_images
from shiftkit.errors import ShiftkitError


def _generator(*keys: object) -> torch.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class AugmentResult:
    out: str
    written_new: dict[str, int]
    copied: int
    boxes_dropped: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": self.out, "new_samples": self.written_new, "copied_originals": self.copied,
                "boxes_dropped": self.boxes_dropped, "skipped_errors": self.errors}


def sample_class(ds: Dataset, index: int, class_freq: Counter | None = None) -> str | None:
    """The class an image counts for when balancing: its label, or for masks/boxes the rarest class it holds."""
    e = ds.entries[index]
    if ds.task is Task.CLASSIFICATION:
        return ds.classes[int(e.target)]
    if ds.task is Task.UNLABELED:
        return None
    if ds.task is Task.DETECTION:
        labels = e.target.labels if isinstance(e.target, Boxes) else np.asarray(e.target)[:, 0].astype(int)
        present = {ds.classes[int(c)] for c in labels}
    else:
        from shiftkit.data.images import read_mask

        ids = set(np.unique(read_mask(ds.root / e.mask)).tolist()) - {ds.ignore_index}
        names = dict(zip(ds.class_ids, ds.classes, strict=True))
        present = {names[i] for i in ids if i in names and i != ds.class_ids[0]} or {names.get(ds.class_ids[0])}
    if not present:
        return None
    return min(present, key=lambda c: (class_freq or Counter())[c]) if class_freq else sorted(present)[0]


def image_classes(ds: Dataset) -> list[str | None]:
    """Balancing class of every image (two passes for masks/boxes: frequencies first, then rarest)."""
    if ds.task in (Task.CLASSIFICATION, Task.UNLABELED):
        return [sample_class(ds, i) for i in range(len(ds))]
    freq: Counter = Counter()
    present = []
    for i in range(len(ds)):
        c = sample_class(ds, i)
        present.append(c)
        freq[c] += 1
    return [sample_class(ds, i, freq) for i in range(len(ds))]


def apply_plan_to_sample(sample: Sample, ops: list[OpSpec], class_name: str | None, g: torch.Generator) -> tuple[Sample, int]:
    """Apply every op of the plan that covers `class_name`, each with probability p. Returns (sample, boxes dropped)."""
    x = images_to_tensor([sample.image])
    mask = torch.from_numpy(sample.target.astype(np.int64))[None] if isinstance(sample.target, np.ndarray) else None
    boxes = [torch.from_numpy(sample.target.xyxy.copy())] if isinstance(sample.target, Boxes) else None
    labels = sample.target.labels.copy() if isinstance(sample.target, Boxes) else None
    dropped = 0
    for spec in ops:
        # draw every random number even when the op is skipped, so one op's choice never shifts another's
        u, v, w, z = (float(t) for t in torch.rand(4, generator=g))
        if not spec.applies_to(class_name) or u >= spec.p:
            continue
        if spec.op in ("hflip", "vflip"):
            x, mask, boxes = getattr(AF, spec.op)(x, mask, boxes)
        elif spec.op == "rot90":
            x, mask, boxes = AF.rot90(x, mask, boxes, k=1 + min(int(v * 3), 2))
        elif spec.op == "crop":
            H, W = x.shape[-2:]
            frac = math.sqrt(spec.low + (spec.high - spec.low) * v)
            h, wd = max(1, round(H * frac)), max(1, round(W * frac))
            top, left = min(int(w * (H - h + 1)), H - h), min(int(z * (W - wd + 1)), W - wd)
            x, mask, boxes, keeps = AF.crop_resize(x, mask, boxes, torch.tensor([[top, left, h, wd]]), (H, W))
            if labels is not None:
                dropped += int((~keeps[0]).sum())
                labels = labels[keeps[0].numpy()]
        else:
            param = torch.tensor([spec.low + (spec.high - spec.low) * v])
            x, _, _ = AF.apply_op(spec.op, x, param, generator=g)
    target = sample.target
    if mask is not None:
        target = mask[0].numpy().astype(np.uint8)
    elif boxes is not None:
        target = Boxes(boxes[0].numpy(), labels)
    meta = dict(sample.meta)
    meta.pop("exif_orientation", None)  # pixels are upright now
    return Sample(image=tensor_to_images(x)[0], target=target, path=sample.path, meta=meta), dropped


def augmented_name(path: str, copy: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}__aug{copy}{ext}"


def augment_dataset(
    ds: Dataset,
    plan: Plan,
    out: str | os.PathLike,
    seed: int = 0,
    only_new: bool = False,
    copies: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    provenance: dict | None = None,
) -> AugmentResult:
    """Write `ds` (unless only_new) plus new augmented samples: `copies` per image, else the plan's
    `new_samples`, else enough to balance classes to `plan.target_ratio`."""
    classes_of = image_classes(ds)
    members: dict[str | None, list[int]] = {}
    for i, c in enumerate(classes_of):
        members.setdefault(c, []).append(i)
    if copies is not None:
        if copies < 0:
            raise ShiftkitError(f"--copies must be >= 0, got {copies}")
        new = {c: copies * len(idx) for c, idx in members.items()}
    elif plan.new_samples is not None:
        unknown = set(plan.new_samples) - set(members)
        if unknown:
            raise ShiftkitError(f"plan asks for classes not in the dataset: {sorted(unknown)}", None,
                                f"the dataset has {sorted(k for k in members if k)}")
        new = {c: plan.new_samples.get(c, 0) for c in members}
    else:
        if ds.task is Task.UNLABELED:
            raise ShiftkitError("cannot balance an unlabeled dataset", ds.root, "use --copies N")
        new = balance_counts({c: len(v) for c, v in members.items() if c is not None}, plan.target_ratio, plan.balance_classes,
                             plan.balance_rule)
    jobs = []  # (source index, copy number, class)
    for c, n in new.items():
        idx = members.get(c, [])
        if n <= 0 or not idx:
            continue
        perm = torch.randperm(len(idx), generator=_generator(seed, "order", c)).tolist()
        jobs += [(idx[perm[k % len(idx)]], k // len(idx), c) for k in range(n)]
    prov = {"command": "augment", "seed": seed, "plan": plan.to_dict(), "copies": copies, "only_new": only_new}
    prov.update(provenance or {})
    result = AugmentResult(str(out), {str(c): n for c, n in new.items() if n}, 0)
    total = (0 if only_new else len(ds)) + len(jobs)
    with DatasetWriter(out, like=ds, provenance=prov, overwrite=overwrite) as writer, tqdm(
        total=total, desc="augment", unit="img", disable=not progress, file=None
    ) as bar:
        if not only_new:
            errors: list = []
            for s in ds.iter_samples(on_error="skip", errors=errors):
                if not writer.is_done(s.path):
                    writer.write(s)
                result.copied += 1
                bar.update()
            result.errors += [str(e) for e in errors]
        for src, copy, c in jobs:
            path = augmented_name(ds.entries[src].path, copy)
            bar.update()
            if writer.is_done(path):
                continue
            try:
                sample = ds[src]
            except ShiftkitError as exc:
                result.errors.append(str(exc))
                continue
            aug, dropped = apply_plan_to_sample(sample, plan.ops, c, _generator(seed, c, ds.entries[src].path, copy))
            result.boxes_dropped += dropped
            writer.write(aug, path=path)
    return result
