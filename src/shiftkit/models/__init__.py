"""Models: backbones, weights registry, heads, discriminators, and a spec-driven builder.

A model spec is a plain JSON-able dict that a checkpoint stores, so that
`build_model(spec)` rebuilds the architecture without command-line flags:

    {"arch": "classifier", "backbone": {"name": "mobilenet_v2", ...}, "num_classes": 2,
     "bottleneck": 256, "dropout": 0.0}
    {"arch": "mobilenet_v2", ...backbone kwargs}          # a bare backbone

`model.spec` holds it for every model built here. Pretrained weights are loaded only when asked
(`weights=`), never when rebuilding from a checkpoint, whose own tensors come next.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.models.backbones import (
    BACKBONES,
    Backbone,
    EfficientNetLite0,
    MobileNetV2,
    Normalization,
    SmallCNN,
    Stage,
)
from shiftkit.models.discriminators import DomainDiscriminator, PixelDiscriminator
from shiftkit.models.heads import Classifier

__all__ = [
    "BACKBONES", "Backbone", "Classifier", "DomainDiscriminator", "EfficientNetLite0", "MobileNetV2",
    "Normalization", "PixelDiscriminator", "SmallCNN", "Stage", "build_model", "create_backbone",
    "default_weights", "load_pretrained", "register_arch",
]  # fmt: skip

# backbone name -> its ImageNet weights in the registry
_DEFAULT_WEIGHTS = {"mobilenet_v2": "mobilenet_v2-imagenet", "efficientnet_lite0": "efficientnet_lite0-imagenet"}


def default_weights(backbone: str) -> str | None:
    """Registry name of the pretrained weights for a backbone (None: trained from scratch)."""
    return _DEFAULT_WEIGHTS.get(backbone)


def create_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs: Any) -> Backbone:
    """Build backbone `name`; `weights`: None, "imagenet" (its registry default), a registry name or a file."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ShiftkitError(f"unknown backbone {name!r}", None, f"choose one of {', '.join(sorted(BACKBONES))}") from None
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise ShiftkitError(f"bad options for backbone {name}: {exc}") from None
    if weights:
        w = str(weights)
        if w in ("imagenet", "pretrained", "default"):
            w = default_weights(name) or ""
            if not w:
                raise ShiftkitError(f"backbone {name} has no pretrained weights", None, "train it from scratch (no --weights)")
        info = load_pretrained(model, w)
        model.spec = dict(model.spec, weights=info["name"] or info["path"])
    return model


def build_model(spec: dict[str, Any] | str, weights: str | os.PathLike | None = None) -> nn.Module:
    """Rebuild a model from its spec (see the module doc); `weights` loads pretrained backbone weights."""
    if isinstance(spec, str):
        spec = {"arch": spec}
    if not isinstance(spec, dict) or "arch" not in spec and "name" not in spec:
        raise ShiftkitError(f"a model spec is a dict with an 'arch' key, got {spec!r}")
    spec = dict(spec)
    arch = spec.pop("arch", None) or spec.pop("name")
    spec.pop("weights", None)  # provenance only
    if arch == "classifier":
        bb = dict(spec.pop("backbone", None) or {})
        if "name" not in bb:
            raise ShiftkitError("classifier spec needs backbone.name", None, f"one of {', '.join(sorted(BACKBONES))}")
        bb.pop("weights", None)
        backbone = create_backbone(bb.pop("name"), weights=weights, **bb)
        try:
            model = Classifier(backbone, **spec)
        except TypeError as exc:
            raise ShiftkitError(f"bad classifier spec: {exc}") from None
        if weights:
            model.spec["backbone"] = dict(backbone.spec)
        return model
    if arch in BACKBONES:
        return create_backbone(arch, weights=weights, **spec)
    _register_optional_archs()
    builder = _EXTRA_ARCHES.get(arch)
    if builder is None:
        known = sorted(set(BACKBONES) | {"classifier"} | set(_EXTRA_ARCHES))
        raise ShiftkitError(f"unknown architecture {arch!r}", None, f"known: {', '.join(known)}")
    return builder(weights=weights, **spec)


# arch name -> builder(weights=None, **spec); filled by other model modules (segmentation, digits)
_EXTRA_ARCHES: dict[str, Any] = {}


# modules that define more architectures; each has `register()` calling `register_arch`
_ARCH_MODULES = ("shiftkit.models.segmentation", "shiftkit.models.ccexam", "shiftkit.models.translator")


def register_arch(name: str, builder: Any) -> None:
    _EXTRA_ARCHES[name] = builder


def _register_optional_archs() -> None:
    import importlib

    for mod_name in _ARCH_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name != mod_name:
                raise
            continue
        register = getattr(mod, "register", None)
        if callable(register):
            register()


def load_pretrained(model: nn.Module, name_or_path: str | os.PathLike, local_path: str | os.PathLike | None = None) -> dict[str, Any]:
    from shiftkit.models.weights import load_pretrained as _load

    return _load(model, name_or_path, local_path)
