"""Segmentation methods: shared base, source-only / oracle, and the name -> method factory.

A segmentation method follows the Method protocol of `shiftkit.adapt.base`; batches carry
"x" (N, C, H, W) floats in [0, 1] and "y" (N, H, W) int64 masks (255 = ignore) where known.
Models are `shiftkit.models.segmentation` models: `forward_multi(x)` gives [main, aux] logits at
the input size; the auxiliary level (AdaptSegNet's multi-level) is used when the model has one.

Supervised part of every method (AdaptSegNet eq. 2, multi-level):
    L_seg = CE(P_main, Y) + lambda_seg_aux * CE(P_aux, Y),   lambda_seg_aux = 0.1,
optionally class-weighted (`class_weights`, e.g. 1/sqrt(class frequency) for masks that are mostly
background: plain CE then collapses to "all background" on small models).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftkit.adapt.base import Method, Phase, StepInfo
from shiftkit.adapt.seg_losses import IGNORE_INDEX, seg_cross_entropy
from shiftkit.errors import ShiftkitError

SEG_METHODS = ("source-only", "oracle", "adaptseg", "adaptseg-single", "minent", "advent", "fda-st", "dacs")


def seg_model(net: nn.Module) -> nn.Module:
    """The segmentation model inside the engine's wrapper (net.model) or the model itself."""
    m = getattr(net, "model", net)
    if not hasattr(m, "forward_multi"):
        raise ShiftkitError(f"{type(m).__name__} is not a segmentation model (no forward_multi)", None,
                            "use --task segmentation with a segmentation architecture (unet, deeplabv2)")
    return m


def levels(net: nn.Module, x: torch.Tensor, multi: bool = True) -> list[torch.Tensor]:
    """[main, aux] logits at x's size (aux only when `multi` and the model has an auxiliary level)."""
    out = seg_model(net).forward_multi(x)
    return list(out) if multi else [out[0]]


def _check_weight(name: str, v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ShiftkitError(f"{name} must be a number, got {v!r}") from None
    if not v >= 0:
        raise ShiftkitError(f"{name} must be >= 0, got {v}", None, "pass a non-negative weight")
    return v


class SegMethod(Method):
    """Base: the multi-level supervised loss, option checking, and recorded settings."""

    name = "seg"
    streams: tuple[str, ...] = ("source", "target")
    task = "segmentation"

    def __init__(self, lambda_seg_aux: float = 0.1, multi_level: bool = True, ignore_index: int = IGNORE_INDEX,
                 class_weights: Any = None):
        self.lambda_seg_aux = _check_weight("lambda_seg_aux", lambda_seg_aux)
        self.multi_level = bool(multi_level)
        self.ignore_index = int(ignore_index)
        self.num_classes: int | None = None
        self.class_weights = None
        if class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if w.numel() < 2 or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
                raise ShiftkitError(f"class_weights must be >= 0, one per class, got {class_weights!r}")
            self.class_weights = w

    def _weight(self, like: torch.Tensor) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if self.class_weights.numel() != like.shape[1]:
            raise ShiftkitError(f"{self.class_weights.numel()} class weights for {like.shape[1]} classes", None,
                                "give one weight per class")
        return self.class_weights.to(like.device)

    def setup(self, engine: Any) -> None:
        self.num_classes = int(getattr(engine, "num_classes", 0) or 0) or None

    def supervised(self, outs: list[torch.Tensor], y: torch.Tensor, prefix: str = "seg") -> dict[str, torch.Tensor]:
        w = self._weight(outs[0])
        losses = {prefix: seg_cross_entropy(outs[0], y, self.ignore_index, w)}
        if len(outs) > 1 and self.lambda_seg_aux > 0:
            losses[f"{prefix}_aux"] = self.lambda_seg_aux * seg_cross_entropy(outs[1], y, self.ignore_index, w)
        return losses

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lambda_seg_aux": self.lambda_seg_aux, "multi_level": self.multi_level,
                "class_weights": None if self.class_weights is None else [round(float(v), 5) for v in self.class_weights]}


class SegSourceOnly(SegMethod):
    """Supervised training on the labeled source only (or on labeled target-train: the oracle)."""

    streams = ("source",)

    def __init__(self, oracle: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.name = "oracle" if oracle else "source-only"
        self.uses_target_labels = bool(oracle)

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        src = batch["source"]
        return [Phase(self.supervised(levels(net, src["x"], self.multi_level), src["y"]), ("model",))]


def build_seg_method(name: str, **options: Any) -> Method:
    """Segmentation method by name: source-only, oracle, adaptseg, adaptseg-single, minent, advent, fda-st, dacs.

    options are the method's keyword arguments (e.g. gan="ls", lambda_adv_main=0.001, beta=0.01).
    """
    key = str(name).lower().strip().replace("_", "-")
    try:
        if key in ("source-only", "sourceonly", "oracle"):
            return SegSourceOnly(oracle=key == "oracle", **options)
        if key in ("adaptseg", "adaptsegnet", "adaptseg-single"):
            from shiftkit.adapt.adaptseg import AdaptSegNet

            if key == "adaptseg-single":
                options = dict(options, multi_level=False)
            return AdaptSegNet(**options)
        if key == "minent":
            from shiftkit.adapt.advent import MinEnt

            return MinEnt(**options)
        if key == "advent":
            from shiftkit.adapt.advent import AdvEnt

            return AdvEnt(**options)
        if key == "dacs":
            from shiftkit.adapt.dacs import DACS

            return DACS(**options)
        if key in ("fda-st", "fda"):
            from shiftkit.adapt.fda_st import FDASelfTraining

            if key == "fda":
                options = dict(options, self_training=False)
            return FDASelfTraining(**options)
    except TypeError as exc:
        raise ShiftkitError(f"bad option for method {name}: {exc}", None, "see the method's docstring for its options") from None
    raise ShiftkitError(f"unknown segmentation method {name!r}", None, f"use one of {', '.join(SEG_METHODS)}")
