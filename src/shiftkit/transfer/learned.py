"""Transfer method `learned`: apply a trained unpaired translator (CUT) to a dataset.

The translator is fully convolutional and keeps H x W, so labels, masks and boxes pass through
untouched (the streaming pipeline copies targets as it does for every method). Each source batch
is resized so its shorter side is the translator's `load_size` (the scale of the images it was
trained on, before cropping), translated, and resized back to the source size; `scale="native"`
runs at the source resolution instead.

Geometry is measured by `edge_alignment`: the Pearson correlation of the Sobel edge magnitudes of
A and A' per image (1 = the same edges), reported next to the same score between an image and
another image of A (what unrelated geometry scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shiftkit.errors import ShiftkitError
from shiftkit.transfer import functional as TF
from shiftkit.transfer.methods import TransferMethod

SCALES = ("train", "native")


class LearnedTranslation(TransferMethod):
    """A' = G(A) with a translator from `shiftkit translator train` (run folder or .safetensors)."""

    name = "learned"
    pairs = False

    def __init__(self, translator: str | Path | None, scale: str = "train", batch_size: int = 16):
        if translator is None:
            raise ShiftkitError("--method learned needs --translator", None,
                                "train one with `shiftkit translator train --source A --target B --out T`, then pass --translator T")
        if scale not in SCALES:
            raise ShiftkitError(f"unknown translator scale {scale!r}", None, f"use one of {', '.join(SCALES)}")
        from shiftkit.train.translator_loop import load_translator

        self.generator, self.info = load_translator(translator, "cpu")
        self.path, self.scale, self.batch_size = str(translator), scale, int(batch_size)

    def apply(self, src: torch.Tensor, tgt: torch.Tensor | None = None) -> torch.Tensor:
        g = self.generator
        if next(g.parameters()).device != src.device:
            g.to(src.device)
        size = work_size(self.info) if self.scale == "train" else None
        with torch.no_grad():
            y = translate_batch(g, src, size, self.batch_size)
        # the transfer channel policy: the output keeps A's channel count (RGB -> luminance)
        return TF.match_channels(y, src.shape[1]).clamp(0, 1)

    def params(self) -> dict[str, Any]:
        from shiftkit.io import sha256_file

        return {"translator": self.info.get("file", self.path), "sha256": sha256_file(self.info["file"]),
                "train_size": self.info.get("train_size"), "load_size": work_size(self.info), "step": self.info.get("step"), "scale": self.scale,
                "spec": self.info.get("spec")}


def work_size(info: dict) -> int:
    """The shorter side at which the translator saw whole images in training."""
    return int(info.get("load_size") or round(1.125 * int(info["train_size"])))


def translate_batch(generator, x: torch.Tensor, size: int | None, batch_size: int = 16) -> torch.Tensor:
    """[0, 1] (B, C, H, W) -> translated [0, 1] images of the same size (see `models.translator.translate`)."""
    from shiftkit.models.translator import translate

    return translate(generator, x, size=size, batch_size=batch_size)


def _sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|grad| of the luminance of [0, 1] images (B, C, H, W) -> (B, H, W)."""
    g = x.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype) / 8.0
    k = torch.stack([kx, kx.T])[:, None]
    d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    return d.pow(2).sum(1).sqrt()


def edge_alignment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of Sobel edge magnitudes of a and b ((B, C, H, W), same H, W) -> (B,).

    r = sum((e_a - mean e_a)(e_b - mean e_b)) / sqrt(sum (e_a - mean e_a)^2 sum (e_b - mean e_b)^2);
    1 when b has a's edges (at any contrast), about 0 for unrelated images.
    """
    if a.ndim != 4 or b.ndim != 4 or a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
        raise ShiftkitError(f"edge_alignment needs two (B, C, H, W) batches of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    ea = _sobel_magnitude(a.float()).flatten(1)
    eb = _sobel_magnitude(b.float()).flatten(1)
    ea = ea - ea.mean(1, keepdim=True)
    eb = eb - eb.mean(1, keepdim=True)
    den = (ea.pow(2).sum(1) * eb.pow(2).sum(1)).sqrt().clamp_min(1e-12)
    return (ea * eb).sum(1) / den


# --------------------------------------------------------------------------- is A' any good?
def _translate_samples(generator, info: dict, samples: list, batch_size: int, device: torch.device, progress: bool) -> list:
    """Translate a list of Samples (any sizes) -> Samples with A' images, targets untouched."""
    import numpy as np
    from tqdm import tqdm

    from shiftkit.transfer import functional as TF

    size = work_size(info)
    out = [None] * len(samples)
    groups: dict[tuple, list[int]] = {}
    for k, s in enumerate(samples):
        groups.setdefault(tuple(s.image.shape), []).append(k)
    bar = tqdm(total=len(samples), desc="translating A", unit="img", file=__import__("sys").stderr, disable=not progress, leave=False)
    for idx in groups.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j : j + batch_size]
            x = torch.from_numpy(np.stack([samples[k].image for k in chunk])).permute(0, 3, 1, 2).to(device).float().div_(255.0)
            with torch.no_grad():
                y = TF.match_channels(translate_batch(generator, x, size, batch_size), x.shape[1])
            y8 = (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for k, img in zip(chunk, y8, strict=True):
                out[k] = samples[k].with_image(np.ascontiguousarray(img))
            bar.update(len(chunk))
    bar.close()
    return out


def _edge_scores(a: list, a2: list, seed: int, work: int = 128) -> dict[str, float]:
    """Mean edge alignment of A vs A' and, as the no-geometry baseline, of A vs a shuffled A."""
    import numpy as np

    def batch(samples):
        xs = []
        for s in samples:
            t = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float().div(255.0)
            t = F.interpolate(t.mean(1, keepdim=True), size=(work, work), mode="bilinear", align_corners=False, antialias=True)
            xs.append(t)
        return torch.cat(xs)

    xa, xa2 = batch(a), batch(a2)
    r = edge_alignment(xa, xa2)
    perm = np.random.default_rng(seed).permutation(len(a))
    perm = np.roll(perm, 1) if len(a) > 1 else perm
    base = edge_alignment(xa[perm], xa) if len(a) > 1 else torch.tensor([float("nan")])
    return {"a_vs_a2": float(r.mean()), "a_vs_a2_min": float(r.min()), "baseline_a_vs_other_a": float(base.mean())}


def label_preservation_scores(classifier: str | None, a: list, a2: list, labels: list[int], fa, fa2, seed: int,
                              device: torch.device, adabn: bool = False) -> dict[str, Any]:
    """Accuracy on A and on A' (same images, translated) of a classifier trained on A.

    `classifier`: a checkpoint trained on A (images `a`, `a2` are Samples); with `adabn` its
    BatchNorm statistics are re-estimated on each scored set before predicting (AdaBN, label-free),
    so a global change of style between A and A' is not counted as lost labels. None: logistic
    regression on the features `fa`, `fa2`, cross-validated on A (also reported with A' features
    standardised by A' statistics, the same idea for a linear judge)."""
    import numpy as np

    from shiftkit.train.metrics import classification_metrics

    y = np.asarray(labels)
    pz2 = None  # the linear judge's predictions on A' standardised by its own statistics
    if classifier:
        import copy

        from shiftkit.adapt.augmented import adabn as adapt_bn
        from shiftkit.train import checkpoint as ckpt
        from shiftkit.train.loaders import preprocess

        model, info, _ = ckpt.load_model(classifier, device)
        h, w = info["input_size"]
        ch = int(info.get("in_channels") or 3)

        def batches(samples):
            for j in range(0, len(samples), 32):
                yield torch.cat([preprocess([s.image], (int(h), int(w)), ch) for s in samples[j : j + 32]]).to(device)

        def predict(samples):
            net = model
            if adabn:
                net = copy.deepcopy(model)
                try:
                    adapt_bn(net, batches(samples))
                except ValueError as exc:
                    raise ShiftkitError(f"--adabn: {exc}", classifier, "use a classifier with BatchNorm layers, or drop --adabn") from None
            with torch.no_grad():
                return torch.cat([net.forward_features(x)[1].argmax(1).cpu() for x in batches(samples)]).numpy()

        pa, pa2 = predict(a), predict(a2)
        how = f"checkpoint {classifier}" + (", BatchNorm statistics re-estimated on each scored set (AdaBN)" if adabn else "")
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        counts = np.bincount(y)
        folds = int(min(5, counts[counts > 0].min())) if len(counts[counts > 0]) > 1 else 0
        if folds < 2:
            return {"skipped": "label preservation needs at least 2 images of each of 2 classes in A"}
        pa, pa2, pz2 = np.empty_like(y), np.empty_like(y), np.empty_like(y)
        z2 = (fa2 - fa2.mean(0)) / (fa2.std(0) + 1e-6)  # A' standardised by its own statistics
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(fa, y):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
            clf.fit(fa[tr], y[tr])
            pa[te], pa2[te] = clf.predict(fa[te]), clf.predict(fa2[te])
            pz2[te] = clf[-1].predict(z2[te])
        how = f"logistic regression on MobileNetV2 features of A, {folds}-fold (each image scored by a model that never saw it)"
    names = [str(i) for i in range(int(max(y.max(), pa.max(), pa2.max())) + 1)]
    ma = classification_metrics(y.tolist(), pa.tolist(), names)
    ma2 = classification_metrics(y.tolist(), pa2.tolist(), names)
    acc_a, acc_a2 = float(ma["accuracy"]), float(ma2["accuracy"])
    ratio = (lambda acc: acc / acc_a if acc_a > 0 else float("nan"))  # noqa: E731
    out = {"classifier": how, "accuracy_a": acc_a, "accuracy_a2": acc_a2,
           "balanced_accuracy_a": float(ma["balanced_accuracy"]), "balanced_accuracy_a2": float(ma2["balanced_accuracy"]),
           "ratio": ratio(acc_a2), "agreement": float((pa == pa2).mean())}
    if pz2 is not None:
        acc_z2 = float((pz2 == y).mean())
        out["domain_standardized"] = {
            "accuracy_a2": acc_z2, "ratio": ratio(acc_z2),
            "note": "the same classifiers, with A' features standardised by A' statistics instead of A's "
                    "(per-domain feature standardisation): a global shift of A' in feature space no longer counts as lost labels"}
    return out


def _segmentation_scores(model_path: str, a: list, a2: list, device: torch.device) -> dict[str, Any]:
    """mIoU against A's masks of a segmentation model trained on A, predicting on A and on A'.

    Images and masks are brought to the model's input size (bilinear / nearest); ratio = mIoU(A') / mIoU(A).
    """
    import numpy as np

    from shiftkit.train import checkpoint as ckpt
    from shiftkit.train.loaders import preprocess
    from shiftkit.train.seg_metrics import seg_confusion, seg_metrics

    model, info, _ = ckpt.load_model(model_path, device)
    if info.get("task") != "segmentation":
        raise ShiftkitError("A is a segmentation set but --classifier is not a segmentation checkpoint", model_path,
                            "pass a checkpoint trained with `shiftkit train --task segmentation` on A")
    classes = list(info["classes"])
    k, ignore = len(classes), int(info.get("ignore_index") or 255)
    h, w = (int(v) for v in info["input_size"])
    ch = int(info.get("in_channels") or 3)

    def miou(samples) -> float:
        cm = torch.zeros(k, k, dtype=torch.long)
        for j in range(0, len(samples), 16):
            chunk = samples[j : j + 16]
            x = torch.cat([preprocess([s.image], (h, w), ch) for s in chunk]).to(device)
            m = torch.stack([torch.from_numpy(np.ascontiguousarray(s.target)).long() for s in chunk]) if all(
                s.target is not None and s.target.shape == chunk[0].target.shape for s in chunk) else None
            with torch.no_grad():
                _, z = model.forward_features(x)
            pred = z.argmax(1).cpu()
            for i, s in enumerate(chunk):
                t = torch.from_numpy(np.ascontiguousarray(s.target)).float()[None, None] if m is None else m[i].float()[None, None]
                t = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")[0, 0].long()
                cm += seg_confusion(pred[i], t, k, ignore)
        return float(seg_metrics(cm, classes)["miou"])

    ma, ma2 = miou(a), miou(a2)
    return {"classifier": f"segmentation checkpoint {model_path}", "miou_a": ma, "miou_a2": ma2,
            "ratio": ma2 / ma if ma > 0 else float("nan")}


def score_translator(translator: str | Path, source: str | Path, target: str | Path, classifier: str | None = None,
                     max_images: int = 300, feature_size: int = 160, seed: int = 0, device: str = "auto",
                     batch_size: int = 16, gap: bool = True, progress: bool = True, adabn: bool = False) -> dict[str, Any]:
    """Is A' any good? (a) Fréchet distance on MobileNetV2 features, A' vs B against A vs B (not
    Inception-FID); (b) label preservation: a classifier trained on A scores A' (accuracy ratio
    A'/A, with `adabn` after re-estimating its BatchNorm statistics on each set; for segmentation with
    a model of A: mIoU on A' against A's masks / mIoU on A), and geometry:
    edge alignment of A vs A'; (c) the gap score (domain classifier on image
    statistics, 0.5 = indistinguishable) of A vs B and A' vs B. On seeded subsets of `max_images`."""
    import time

    import numpy as np

    from shiftkit.analysis.frechet import frechet_from_features, mobilenet_features
    from shiftkit.device import resolve_device
    from shiftkit.train.loaders import dataset_labels, open_any
    from shiftkit.train.translator_loop import load_translator

    t0 = time.perf_counter()
    if max_images < 4:
        raise ShiftkitError(f"--max-images must be >= 4, got {max_images}")
    if adabn and not classifier:
        raise ShiftkitError("--adabn needs --classifier", None,
                            "pass a checkpoint trained on A (the default linear judge reports its per-domain standardised ratio already)")
    dev = resolve_device(device)
    gen, info = load_translator(translator, dev)
    ds_a, ds_b = open_any(source, what="--source"), open_any(target, task="unlabeled", what="--target")
    rng = np.random.default_rng(seed)
    ia = sorted(rng.choice(len(ds_a), min(max_images, len(ds_a)), replace=False).tolist())
    ib = sorted(rng.choice(len(ds_b), min(max_images, len(ds_b)), replace=False).tolist())
    a = [ds_a[i] for i in ia]
    b = [ds_b[i] for i in ib]
    a2 = _translate_samples(gen, info, a, batch_size, dev, progress)
    t_translate = time.perf_counter() - t0
    from shiftkit.models import create_backbone

    bb = create_backbone("mobilenet_v2", weights="imagenet")
    fa = mobilenet_features(a, feature_size, device, progress, model=bb)
    fa2 = mobilenet_features(a2, feature_size, device, progress, model=bb)
    fb = mobilenet_features(b, feature_size, device, progress, model=bb)
    res: dict[str, Any] = {
        "translator": info["file"], "translator_step": info.get("step"), "train_size": info.get("train_size"),
        "n": {"a": len(a), "b": len(b)}, "seed": seed,
        "frechet": {"a_vs_b": frechet_from_features(fa, fb), "a2_vs_b": frechet_from_features(fa2, fb),
                    "a_vs_a2": frechet_from_features(fa, fa2), "backbone": f"mobilenet_v2 (ImageNet), {feature_size}px",
                    "note": "Fréchet distance on MobileNetV2 pooled features, not Inception-FID"},
        "geometry": _edge_scores(a, a2, seed),
    }
    labels = dataset_labels(ds_a)
    task = getattr(getattr(ds_a, "task", None), "value", None)
    if labels is not None:
        res["label_preservation"] = label_preservation_scores(classifier, a, a2, [labels[i] for i in ia], fa, fa2, seed, dev, adabn)
    elif task == "segmentation" and classifier:
        if adabn:
            raise ShiftkitError("--adabn is for classification checkpoints", classifier, "drop --adabn for a segmentation model")
        res["label_preservation"] = _segmentation_scores(classifier, a, a2, dev)
    else:
        res["label_preservation"] = {"skipped": "A is not a classification set; see geometry (edge alignment)"}
    if gap:
        from shiftkit.analysis.drift import gap_score

        folds = min(5, len(a), len(b))
        kw = dict(folds=folds, seed=seed, progress=progress, cache=False)
        before, after = gap_score(a, b, **kw), gap_score(a2, b, **kw)
        res["gap"] = {"before": {k: v["accuracy"] for k, v in before.items()}, "after": {k: v["accuracy"] for k, v in after.items()},
                      "note": "domain-classifier accuracy, 0.5 = indistinguishable"}
    res["translate_s"] = round(t_translate, 2)
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res
