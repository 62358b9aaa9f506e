"""AdaptSegNet (Tsai et al., CVPR 2018): adversarial alignment of segmentation *outputs*.

Per output level l (main = last stage, aux = an earlier stage; "multi-level"), a fully
convolutional discriminator D_l reads softmax maps P = softmax(G(x)) and tells source from target:

  step 1 (segmenter, D frozen):
      L_G = CE(P_s^main, Y_s) + lambda_seg_aux CE(P_s^aux, Y_s) + sum_l lambda_adv^l L_gan(D_l(P_t^l), source)
  step 2 (discriminators, inputs detached):
      L_D = sum_l 1/2 [ L_gan(D_l(P_s^l), source) + L_gan(D_l(P_t^l), target) ]

L_gan is BCE (the paper) or least squares (`gan="ls"`). Paper settings: lambda_seg_aux 0.1,
lambda_adv^aux 0.0002, lambda_adv^main 0.001; D: Adam lr 1e-4, betas (0.9, 0.99). The single-level
variant (`multi_level=False`) adapts the main output only. AdvEnt (advent.py) is the same recipe on
self-information maps instead of softmax maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.base import Phase, StepInfo
from shiftkit.adapt.seg_base import SegMethod, _check_weight, levels, seg_model
from shiftkit.adapt.seg_losses import gan_loss
from shiftkit.errors import ShiftkitError

LEVELS = ("main", "aux")


def disc_layers_for(side: int, max_layers: int = 4) -> int:
    """Most stride-2 layers (<= max_layers) a PixelDiscriminator can apply to a side-px map: 2^(L+1) <= side."""
    if side < 4:
        raise ShiftkitError(f"images of {side} px are too small for a pixel discriminator", None, "use --size 16 or more")
    return max(1, min(max_layers, int(math.floor(math.log2(side))) - 1))


def _set_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class OutputAdversarial(SegMethod):
    """Two-phase adversarial recipe on per-level maps of the softmax output; `space` picks the map."""

    name = "adaptseg"
    space = "softmax"  # "softmax" (AdaptSegNet) | "entropy" (AdvEnt)

    def __init__(self, lambda_adv_main: float = 0.001, lambda_adv_aux: float = 0.0002, gan: str = "bce",
                 multi_level: bool = True, lambda_seg_aux: float = 0.1, disc_ndf: int = 64, disc_layers: int | None = None,
                 disc_lr: float = 1e-4, disc_betas: tuple[float, float] = (0.9, 0.99), size: int | None = None,
                 ignore_index: int = 255, class_weights=None):
        super().__init__(lambda_seg_aux=lambda_seg_aux, multi_level=multi_level, ignore_index=ignore_index,
                         class_weights=class_weights)
        if gan not in ("bce", "ls"):
            raise ShiftkitError(f"gan must be 'bce' or 'ls', got {gan!r}", None, "use --method-option gan=bce or gan=ls")
        self.gan = gan
        self.lambda_adv = {"main": _check_weight("lambda_adv_main", lambda_adv_main),
                           "aux": _check_weight("lambda_adv_aux", lambda_adv_aux)}
        self.disc_ndf = int(disc_ndf)
        self.disc_layers = None if disc_layers is None else int(disc_layers)
        self.disc_lr = float(disc_lr)
        self.disc_betas = (float(disc_betas[0]), float(disc_betas[1]))
        self.size = size
        self.discs: dict[str, nn.Module] = {}
        if not self.multi_level:
            self.name = f"{self.name}-single"

    # --- set-up ----------------------------------------------------------------------------
    def setup(self, engine: Any) -> None:
        super().setup(engine)
        from shiftkit.models.discriminators import PixelDiscriminator

        if not self.num_classes:
            raise ShiftkitError(f"{self.name} needs the number of classes from the engine")
        model = seg_model(engine.model)
        has_aux = getattr(model, "aux_classifier", None) is not None
        side = int(self.size or getattr(engine, "size", 0) or 64)
        n_layers = self.disc_layers or disc_layers_for(side)
        names = ["main"] + (["aux"] if self.multi_level and has_aux and self.lambda_adv["aux"] > 0 else [])
        self.discs = {n: PixelDiscriminator(self.num_classes, self.disc_ndf, n_layers) for n in names}

    def modules(self) -> dict[str, nn.Module]:
        return {f"disc_{n}": d for n, d in self.discs.items()}

    def optimizer_options(self) -> dict[str, dict[str, Any]]:
        """Per-module optimiser settings the engine honours (paper: Adam lr 1e-4, betas (0.9, 0.99))."""
        return {f"disc_{n}": {"optimizer": "adam", "lr": self.disc_lr, "betas": self.disc_betas, "weight_decay": 0.0,
                              "schedule": True} for n in self.discs}

    # --- maths --------------------------------------------------------------------------------
    def disc_input(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float(), dim=1)

    def extra_target_losses(self, outs_t: list[torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        return {}

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        if not self.discs:
            raise ShiftkitError(f"{self.name}: setup() was not called (no discriminator)")
        xs, ys, xt = batch["source"]["x"], batch["source"]["y"], batch["target"]["x"]
        ns = xs.shape[0]
        outs = levels(net, torch.cat([xs, xt]), self.multi_level)  # one forward: BatchNorm sees both domains
        outs_s, outs_t = [o[:ns] for o in outs], [o[ns:] for o in outs]
        losses = self.supervised(outs_s, ys)
        maps_s = [self.disc_input(o) for o in outs_s]
        maps_t = [self.disc_input(o) for o in outs_t]
        for d in self.discs.values():
            _set_grad(d, False)  # step 1 trains the segmenter only; gradients still flow to the maps
        fooled = {}
        for i, (n, d) in enumerate(self.discs.items()):
            if i >= len(maps_t) or self.lambda_adv[n] == 0:
                continue
            d_t = d(maps_t[i])
            losses[f"adv_{n}"] = self.lambda_adv[n] * gan_loss(d_t, 1.0, self.gan)
            fooled[n] = d_t.detach()
        losses.update(self.extra_target_losses(outs_t, step))
        logs: dict[str, float] = {}
        det_s = [m.detach() for m in maps_s]
        det_t = [m.detach() for m in maps_t]

        def disc_losses() -> dict[str, torch.Tensor]:
            out = {}
            for i, (n, d) in enumerate(self.discs.items()):
                if i >= len(det_t):
                    continue
                _set_grad(d, True)
                d_s, d_t = d(det_s[i]), d(det_t[i])
                out[f"disc_{n}"] = 0.5 * (gan_loss(d_s, 1.0, self.gan) + gan_loss(d_t, 0.0, self.gan))
                thr = 0.0 if self.gan == "bce" else 0.5
                logs[f"disc_acc_{n}"] = float(torch.cat([(d_s > thr).float().flatten(), (d_t <= thr).float().flatten()]).mean())
            return out

        return [Phase(losses, ("model",), logs), Phase(disc_losses, tuple(f"disc_{n}" for n in self.discs), logs)]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "space": self.space, "gan": self.gan, "lambda_adv_main": self.lambda_adv["main"],
                "lambda_adv_aux": self.lambda_adv["aux"], "disc_ndf": self.disc_ndf, "disc_layers": self.disc_layers,
                "disc_lr": self.disc_lr, "disc_betas": list(self.disc_betas), "levels": sorted(self.discs)}


class AdaptSegNet(OutputAdversarial):
    """Tsai et al. 2018 (see the module doc)."""

    name = "adaptseg"
    space = "softmax"


def register() -> None:
    from shiftkit.adapt.registry import register as _register
    from shiftkit.adapt.seg_base import build_seg_method

    _register("adaptseg", lambda **kw: build_seg_method("adaptseg", **kw))
    _register("adaptseg-single", lambda **kw: build_seg_method("adaptseg-single", **kw))
