"""Gap on pretrained backbone features (optional): plugs shiftkit.models into `drift.feature_gap`.

The pretrained-free gap (`drift.gap_score`) says *whether* two domains differ in low-level
statistics; a frozen ImageNet backbone says whether they differ in what a network sees, which is
closer to what will hurt a model trained on one and used on the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shiftkit.errors import ShiftkitError

BACKBONES = ("mobilenet_v2",)


def _models():
    try:
        from shiftkit.models import create_backbone
        from shiftkit.models.features import extract_features
    except ImportError as exc:  # the models package is optional for analysis
        raise ShiftkitError(f"backbone features unavailable ({exc})", None, "use --backbone none") from None
    return create_backbone, extract_features


def backbone_features(data: Any, backbone: str = "mobilenet_v2", size: int = 160, batch_size: int = 64,
                      device: str = "auto", progress: bool = True, cache: bool = True, model: Any = None) -> np.ndarray:
    """(N, D) pooled features of a frozen ImageNet backbone for a dataset or list of Samples (cached)."""
    if backbone not in BACKBONES:
        raise ShiftkitError(f"unknown backbone {backbone!r}", None, f"use one of: none, {', '.join(BACKBONES)}")
    create_backbone, extract_features = _models()
    model = model if model is not None else create_backbone(backbone, weights="imagenet")
    fs = extract_features(model, data, size=size, batch_size=batch_size, device=device, use_cache=cache, progress=progress)
    return np.asarray(fs.features, dtype=np.float32)


def backbone_gap(a: Any, b: Any, backbone: str = "mobilenet_v2", size: int = 160, folds: int = 5, seed: int = 0,
                 max_per_domain: int | None = 5000, model: Any = None, **kw: Any) -> dict[str, Any]:
    """`drift.feature_gap` (domain classifier accuracy + MMD^2) on the backbone's pooled features.

    `model`: an already built shiftkit Backbone (default: `backbone` with its ImageNet weights).
    """
    from shiftkit.analysis.drift import feature_gap

    if backbone not in BACKBONES:
        raise ShiftkitError(f"unknown backbone {backbone!r}", None, f"use one of: none, {', '.join(BACKBONES)}")
    create_backbone, _ = _models()
    model = model if model is not None else create_backbone(backbone, weights="imagenet")
    fa = backbone_features(a, backbone, size, model=model, **kw)
    fb = backbone_features(b, backbone, size, model=model, **kw)
    out = feature_gap(fa, fb, folds=folds, seed=seed, max_per_domain=max_per_domain)
    out.update(backbone=backbone, size=size)
    return out
