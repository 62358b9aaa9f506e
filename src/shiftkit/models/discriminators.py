"""Domain discriminators for adversarial adaptation.

- `DomainDiscriminator`: an MLP on pooled features (DANN, CDAN); it returns *logits*, so callers
  use `binary_cross_entropy_with_logits` (stable) instead of a sigmoid + BCE.
- `PixelDiscriminator`: a fully-convolutional discriminator on (soft-max) segmentation maps or
  entropy maps (AdaptSegNet, AdvEnt): 4x4 convs with stride 2 and LeakyReLU(0.2), one logit per
  output cell.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftkit.errors import ShiftkitError


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ShiftkitError(f"{name} must be a positive integer, got {value!r}")


class DomainDiscriminator(nn.Module):
    """MLP domain classifier: (B, in_dim) -> (B, 1) logits, 1 = source, 0 = target by convention.

    Layout follows DANN/CDAN practice (Ganin et al. 2016; Long et al. 2018):
    Linear(in, h) -> [BN] -> ReLU -> Dropout -> Linear(h, h) -> [BN] -> ReLU -> Dropout -> Linear(h, 1).
    Put a gradient reversal layer in front of it (the method does that, not this module).
    """

    def __init__(self, in_dim: int, hidden: int = 1024, batch_norm: bool = True, dropout: float = 0.5):
        super().__init__()
        _check_positive("in_dim", in_dim)
        _check_positive("hidden", hidden)
        if not 0.0 <= float(dropout) < 1.0:
            raise ShiftkitError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_dim, self.hidden = in_dim, hidden
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(2):
            layers.append(nn.Linear(d, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ShiftkitError(
                f"DomainDiscriminator expects (B, {self.in_dim}) features, got {tuple(features.shape)}"
            )
        return self.net(features)


class PixelDiscriminator(nn.Module):
    """Fully-convolutional discriminator (AdaptSegNet, Tsai et al. 2018): (B, C, H, W) -> (B, 1, H/32, W/32).

    Five 4x4 convs, stride 2, padding 1; channels ndf, 2ndf, 4ndf, 8ndf, 1; LeakyReLU(0.2) between.
    Each conv maps a side n to floor(n / 2) (n >= 2), so the output is H / 2^(num_layers+1) for H a
    multiple of that; inputs need a side of at least 2^(num_layers+1) (32 by default), use fewer
    layers for tiny inputs.
    """

    def __init__(self, in_channels: int, ndf: int = 64, num_layers: int = 4):
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("ndf", ndf)
        _check_positive("num_layers", num_layers)
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(num_layers):
            out = ndf * (2**i)
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.downsample = 2 ** (num_layers + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShiftkitError(
                f"PixelDiscriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.downsample:
            raise ShiftkitError(
                f"PixelDiscriminator input {tuple(x.shape[-2:])} is smaller than {self.downsample} px",
                None,
                "upsample the maps or build it with fewer num_layers",
            )
        return self.net(x)
