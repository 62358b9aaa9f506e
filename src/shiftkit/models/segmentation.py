"""Segmentation models with one or two output levels (AdaptSegNet-style multi-level adaptation).

- `DeepLabV2`: a backbone (MobileNetV2 by default, dilated to output stride 8 or 16) with the
  DeepLab-v2 ASPP classifier on the last stage and, optionally, a second ASPP on an earlier stage
  (`aux_stage`; AdaptSegNet's "multi-level": conv4 + conv5 of ResNet-101, here stage 3 + 4).
- `UNet`: a small U-Net for tiny inputs (e.g. 64x64 digit scenes); its auxiliary level is a 1x1
  classifier on the bottleneck.

Every model takes float images in [0, 1] (B, C, H, W) like the backbones, and returns logits at
the input resolution (bilinear upsampling): `forward(x) -> (B, K, H, W)`,
`forward_multi(x) -> [main, aux]` (aux only when enabled), `forward_features(x) -> (last feature
map, main logits)`. `param_groups(lr, head_lr_mult)` gives heads a larger learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.models.backbones import Backbone, Normalization, Stage
from shiftkit.models.heads import body_head_param_groups


class ASPP(nn.Module):
    """DeepLab-v2 classifier: logits = sum_r Conv3x3_{dilation r}(x) (Chen et al. 2017, ASPP-L).

    One 3x3 convolution with dilation = padding = r per rate, each mapping C -> K classes, summed.
    Rates larger than the feature map only see the centre tap (zero padding): for small inputs,
    pick smaller rates (e.g. (1, 2, 3, 4) at an 8x8 map).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or any(r < 1 for r in rates):
            raise ShiftkitError(f"ASPP rates must be positive integers, got {rates!r}")
        self.rates = rates
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


def _check_num_classes(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ShiftkitError(f"num_classes must be an integer >= 2, got {k!r}")
    return k


def _up(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """Shared API; subclasses implement `_levels(x) -> (last feature map, [main, aux...] logits)`."""

    backbone: Backbone
    spec: dict[str, Any]

    @property
    def normalization(self) -> Normalization:
        return self.backbone.normalization

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def forward_multi(self, x: torch.Tensor, upsample: bool = True) -> list[torch.Tensor]:
        """[main, aux...] logits, at the input size when `upsample` (else at feature resolution)."""
        _, levels = self._levels(x)
        return [_up(l, tuple(x.shape[-2:])) for l in levels] if upsample else levels

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat, levels = self._levels(x)
        return feat, _up(levels[0], tuple(x.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    def head_parameters(self) -> list[nn.Parameter]:
        body = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in body]

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float | None = None) -> list[dict[str, Any]]:
        """Backbone at `lr`, heads/decoder at `lr * head_lr_mult` (DeepLab/AdaptSegNet practice); frozen params left out."""
        return body_head_param_groups(self.backbone, self.head_parameters(), lr, head_lr_mult, weight_decay)


class DeepLabV2(SegmentationModel):
    """Backbone -> ASPP on the last stage (+ ASPP on stage `aux_stage` for multi-level adaptation)."""

    def __init__(self, backbone: Backbone, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24), aux_stage: int | None = 3):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise ShiftkitError(f"DeepLabV2 needs a shiftkit Backbone, got {type(backbone).__name__}")
        self.num_classes = _check_num_classes(num_classes)
        n = len(backbone.stages)
        if aux_stage is not None and not (0 <= int(aux_stage) < n - 1):
            raise ShiftkitError(f"aux_stage must be None or in [0, {n - 2}] for {backbone.name}, got {aux_stage!r}")
        self.backbone = backbone
        self.aux_stage = None if aux_stage is None else int(aux_stage)
        self.classifier = ASPP(backbone.out_channels, num_classes, rates)
        self.aux_classifier = ASPP(backbone.stages[self.aux_stage].channels, num_classes, rates) if self.aux_stage is not None else None
        self.spec = {
            "arch": "deeplabv2", "backbone": dict(backbone.spec), "num_classes": num_classes,
            "rates": list(self.classifier.rates), "aux_stage": self.aux_stage,
        }  # fmt: skip

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self.backbone.forward_stages(x)
        levels = [self.classifier(maps[-1])]
        if self.aux_classifier is not None:
            levels.append(self.aux_classifier(maps[self.aux_stage]))
        return maps[-1], levels


# ------------------------------------------------------------------------------------------------
# small U-Net
# ------------------------------------------------------------------------------------------------


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNetEncoder(Backbone):
    """U-Net contracting path: stage i = [maxpool 2 (i > 0)] + double conv; strides 1, 2, 4, ..., channels base * 2^i."""

    name = "unet_encoder"

    def __init__(self, in_channels: int = 3, base: int = 16, depth: int = 3, input_normalize: bool = True):
        if in_channels not in (1, 3):
            raise ShiftkitError(f"unet: in_channels must be 1 or 3, got {in_channels!r}")
        if not isinstance(base, int) or base < 2 or not isinstance(depth, int) or not 1 <= depth <= 6:
            raise ShiftkitError(f"unet: need base >= 2 and 1 <= depth <= 6, got base={base!r} depth={depth!r}")
        chans = [base * 2**i for i in range(depth + 1)]
        super().__init__(
            Normalization((0.5,) * in_channels, (0.5,) * in_channels, in_channels, 64),
            [Stage(2**i, c) for i, c in enumerate(chans)],
            input_normalize,
        )
        self.spec = {"name": self.name, "in_channels": in_channels, "base": base, "depth": depth}
        self.blocks = nn.ModuleList()
        cin = in_channels
        for i, c in enumerate(chans):
            block = _double_conv(cin, c) if i == 0 else nn.Sequential(nn.MaxPool2d(2), _double_conv(cin, c))
            self.blocks.append(block)
            cin = c

    def _stage_modules(self) -> list[list[nn.Module]]:
        return [[b] for b in self.blocks]


class UNet(SegmentationModel):
    """U-Net (Ronneberger et al. 2015), small: decoder = bilinear x2 up, concat skip, double conv; 1x1 to K.

    Sizes need not be powers of two (each up-step resizes to its skip's size). The auxiliary level
    is a 1x1 classifier on the bottleneck (coarsest) map.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base: int = 16, depth: int = 3, aux: bool = True):
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.backbone = UNetEncoder(in_channels, base, depth)
        chans = [s.channels for s in self.backbone.stages]
        self.decoder = nn.ModuleList(_double_conv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)
        self.aux_classifier = nn.Conv2d(chans[-1], num_classes, 1) if aux else None
        self.spec = {"arch": "unet", "num_classes": num_classes, "in_channels": in_channels, "base": base, "depth": depth, "aux": bool(aux)}

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self.backbone.forward_stages(x)
        y = maps[-1]
        for dec, skip in zip(self.decoder, reversed(maps[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = dec(torch.cat([y, skip], dim=1))
        levels = [self.classifier(y)]
        if self.aux_classifier is not None:
            levels.append(self.aux_classifier(maps[-1]))
        return y, levels


# ------------------------------------------------------------------------------------------------
# builders registered with shiftkit.models.build_model
# ------------------------------------------------------------------------------------------------


def build_deeplabv2(weights: Any = None, backbone: dict | None = None, num_classes: int = 0, rates: Sequence[int] = (6, 12, 18, 24), aux_stage: int | None = 3) -> DeepLabV2:
    from shiftkit.models import create_backbone

    bb = dict(backbone or {"name": "mobilenet_v2", "output_stride": 8})
    bb.pop("weights", None)
    name = bb.pop("name", "mobilenet_v2")
    model = DeepLabV2(create_backbone(name, weights=weights, **bb), num_classes, rates, aux_stage)
    return model


def build_unet(weights: Any = None, **kwargs: Any) -> UNet:
    if weights:
        raise ShiftkitError("unet has no pretrained weights", None, "train it from scratch (no --weights)")
    try:
        return UNet(**kwargs)
    except TypeError as exc:
        raise ShiftkitError(f"bad unet spec: {exc}") from None


def register() -> None:
    """Make `shiftkit.models.build_model` know "deeplabv2" and "unet" (checkpoints store these specs)."""
    from shiftkit.models import register_arch

    register_arch("deeplabv2", build_deeplabv2)
    register_arch("unet", build_unet)


register()
