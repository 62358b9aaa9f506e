"""Weak and strong views of a raw target batch, made on the device with kornia (FixMatch style).

Images: float (N, C, H, W) in [0, 1]. weak = random translation up to 12.5% (no flip: digits and
text are not flip-invariant); strong = weak + colour jitter (brightness, contrast, and saturation/hue
on RGB) + Gaussian blur sometimes + one random erased patch (Cutout).
Cached features (N, D): weak = identity, strong = feature dropout (p = 0.3), the feature-space
analogue of a strong perturbation. Randomness comes from torch's global RNG, which the engine
seeds and checkpoints, so resumed runs draw the same views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CACHE: dict[tuple, object] = {}


def _aug(kind: str, channels: int):
    import kornia.augmentation as K

    key = (kind, channels)
    if key not in _CACHE:
        weak = [K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection", p=1.0)]
        if kind == "weak":
            ops = weak
        else:
            jitter = (
                K.ColorJiggle(0.4, 0.4, 0.4, 0.1, p=0.8)
                if channels == 3
                else K.ColorJiggle(0.4, 0.4, 0.0, 0.0, p=0.8)
            )
            ops = weak + [
                jitter,
                K.RandomGaussianBlur((3, 3), (0.1, 1.5), p=0.2),
                K.RandomErasing(scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0.5, p=1.0),
            ]
        _CACHE[key] = K.AugmentationSequential(*ops, data_keys=["input"])
    return _CACHE[key]


def _check(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() not in (2, 4) or not x.is_floating_point():
        raise ValueError(f"views take float (N, C, H, W) images or (N, D) features, got {getattr(x, 'shape', x)}")


@torch.no_grad()
def weak_view(x: torch.Tensor) -> torch.Tensor:
    _check(x)
    if x.dim() == 2:
        return x
    aug = _aug("weak", x.shape[1]).to(x.device)
    return aug(x.float()).to(x.dtype)


@torch.no_grad()
def strong_view(x: torch.Tensor) -> torch.Tensor:
    _check(x)
    if x.dim() == 2:
        return F.dropout(x, p=0.3, training=True)
    aug = _aug("strong", x.shape[1]).to(x.device)
    return aug(x.float()).clamp(0, 1).to(x.dtype)
