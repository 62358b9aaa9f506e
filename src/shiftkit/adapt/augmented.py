"""Training-time augmentation as a Method wrapper, test-time flips, and AdaBN.

Why here: the engine feeds raw [0, 1] batches to a Method; wrapping a Method lets any recipe
(source-only, dann, mcc, self-training ...) see label-preserving augmented source (and/or target)
batches without touching the engine. All ops are batched tensor maths, one random draw per image,
from torch's global RNG (which the engine seeds and checkpoints, so resume replays them).

- `dihedral`: x -> rot90(x, k_i) then optional horizontal flip, k_i ~ U{0..3}: the 8 symmetries
  of a square; label-preserving for solar cells, not for digits.
- `flips`: x -> optional horizontal flip, then optional vertical flip (p = 0.5 each): the 4 symmetries that
  keep the image's axes (no quarter turn), for data with a fixed orientation (ELPV busbars; see
  `analysis.symmetry`).
- `scale_crop`: zoom in by s_i ~ U[min_scale, 1] around a random centre (affine resample):
  x'(u) = x(s u + t), |t| <= 1 - s (normalised coordinates), reflection padding.
- `jitter`: x' = clamp((x - mean_i) * c_i + mean_i + b_i, 0, 1), c_i ~ U[1-c, 1+c], b_i ~ U[-b, b].
- `random_affine`: rotation, anisotropic scale, shear and shift (digits).
- `degrade_digits`: a 28x28 MNIST-style digit -> its ink box scaled into a 32x32 binary bitmap
  (threshold t_i, sometimes thickened) -> 4x4 block counts (17 levels, the UCI 8x8 recipe) ->
  back to 20x20 (bilinear, antialiased) -> padded to 28x28: the path the UCI target digits took.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.base import Method, StepInfo
from shiftkit.device import forward_chunked

Aug = Callable[[torch.Tensor], torch.Tensor]


def _check_images(x: torch.Tensor, name: str = "images") -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, device="cpu").mul(hi - lo).add(lo).to(like.device, like.dtype)


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """Per image, one of the 8 square symmetries (rot90 by k_i, then a flip with p = 0.5)."""
    _check_images(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral needs square images, got {tuple(x.shape[-2:])}")
    n = x.shape[0]
    k = torch.randint(0, 4, (n,))
    flip = torch.rand(n) < 0.5
    out = torch.empty_like(x)
    for r in range(4):
        sel = (k == r).nonzero().flatten().tolist()
        if sel:
            out[sel] = torch.rot90(x[sel], r, (2, 3))
    f = flip.nonzero().flatten().tolist()
    if f:
        out[f] = out[f].flip(3)
    return out


def flips(x: torch.Tensor) -> torch.Tensor:
    """Per image, a horizontal flip and a vertical flip, each with p = 0.5 (identity, h, v or a half turn)."""
    _check_images(x)
    n = x.shape[0]
    h, v = torch.rand(n) < 0.5, torch.rand(n) < 0.5
    out = x.clone()
    for sel, dim in ((h, 3), (v, 2)):
        idx = sel.nonzero().flatten().tolist()
        if idx:
            out[idx] = out[idx].flip(dim)
    return out


def _resample(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def scale_crop(x: torch.Tensor, min_scale: float = 0.85) -> torch.Tensor:
    """Zoom in by s_i ~ U[min_scale, 1] at a random position that keeps the crop inside the image."""
    _check_images(x)
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    if min_scale == 1.0:
        return x
    n = x.shape[0]
    s = _uniform(n, min_scale, 1.0, x)
    t = (1 - s)[:, None] * _uniform(2 * n, -1.0, 1.0, x).view(n, 2)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = t
    return _resample(x, theta, "reflection")


def jitter(x: torch.Tensor, contrast: float = 0.2, brightness: float = 0.1) -> torch.Tensor:
    """Per-image contrast c_i ~ U[1-c, 1+c] about the image mean, plus brightness b_i ~ U[-b, b]."""
    _check_images(x)
    if contrast < 0 or brightness < 0:
        raise ValueError(f"contrast and brightness must be >= 0, got {contrast}, {brightness}")
    n = x.shape[0]
    c = _uniform(n, 1 - contrast, 1 + contrast, x).view(n, 1, 1, 1)
    b = _uniform(n, -brightness, brightness, x).view(n, 1, 1, 1)
    m = x.mean((1, 2, 3), keepdim=True)
    return ((x - m) * c + m + b).clamp(0, 1)


def random_affine(x: torch.Tensor, degrees: float = 10.0, scale: float = 0.1, shear: float = 0.15,
                  translate: float = 0.1) -> torch.Tensor:
    """Rotation r ~ U[-deg, deg], scales (s_x, s_y) ~ U[1-scale, 1+scale], shear, shift; zero padding."""
    _check_images(x)
    if min(degrees, scale, shear, translate) < 0 or scale >= 1:
        raise ValueError(f"affine ranges must be >= 0 (scale < 1), got {degrees}, {scale}, {shear}, {translate}")
    n = x.shape[0]
    r = _uniform(n, -degrees, degrees, x) * (math.pi / 180)
    sx, sy = _uniform(n, 1 - scale, 1 + scale, x), _uniform(n, 1 - scale, 1 + scale, x)
    sh = _uniform(n, -shear, shear, x)
    c, s = torch.cos(r), torch.sin(r)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    # inverse map (output -> input): rotation * shear, divided by the scale of each axis
    theta[:, 0, 0], theta[:, 0, 1] = c / sx, (-s + sh) / sx
    theta[:, 1, 0], theta[:, 1, 1] = s / sy, c / sy
    theta[:, :, 2] = _uniform(2 * n, -translate, translate, x).view(n, 2)
    return _resample(x, theta, "zeros")


def digit_boxes(x: torch.Tensor, ink: float = 0.1) -> torch.Tensor:
    """Per image (N, 4) bounding box (row0, row1, col0, col1), inclusive, of pixels > ink; the
    whole image where there is no ink."""
    _check_images(x)
    m = (x.amax(1) > ink)
    n, h, w = m.shape
    rows, cols = m.any(2), m.any(1)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    big = 10**6
    r0 = torch.where(rows, ar_h, big).amin(1)
    r1 = torch.where(rows, ar_h, -1).amax(1)
    c0 = torch.where(cols, ar_w, big).amin(1)
    c1 = torch.where(cols, ar_w, -1).amax(1)
    empty = r1 < 0
    box = torch.stack([r0, r1, c0, c1], 1)
    box[empty] = torch.tensor([0, h - 1, 0, w - 1], device=x.device)
    return box


def degrade_digits(x: torch.Tensor, threshold: tuple[float, float] = (0.25, 0.55), thicken: float = 0.5,
                   box: int = 20, levels: int = 16) -> torch.Tensor:
    """Digits -> the UCI 8x8 path -> back to (H, W) like the builder's upsampling.

    Per image: its ink bounding box is scaled so that its longer side fills a 32x32 bitmap
    (aspect kept, centred; theta = [[s/W, 0, 2c_x/W - 1], [0, s/H, 2c_y/H - 1]], s = longer side),
    binarised at t_i ~ U[threshold], thickened by a 3x3 max filter with probability `thicken`
    (UCI pens are thicker), reduced to 8x8 counts of 4x4 blocks (0..16), then resized to
    box x box (bilinear, antialiased) and padded to the input size, as the target was built.
    """
    _check_images(x)
    n, _, h, w = x.shape
    if h != w or not 0 < box <= h:
        raise ValueError(f"degrade_digits needs square images holding a box of {box} pixels, got {(h, w)}")
    if not 0 <= thicken <= 1 or not 0 < threshold[0] <= threshold[1] < 1:
        raise ValueError(f"thicken must be in [0, 1] and 0 < threshold[0] <= threshold[1] < 1, got {thicken}, {threshold}")
    b = digit_boxes(x).to(x.dtype)
    side = torch.maximum(b[:, 1] - b[:, 0] + 1, b[:, 3] - b[:, 2] + 1)
    cy, cx = (b[:, 0] + b[:, 1] + 1) / 2, (b[:, 2] + b[:, 3] + 1) / 2
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = side / w, 2 * cx / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = side / h, 2 * cy / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], 32, 32], align_corners=False)
    big = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    t = _uniform(n, threshold[0], threshold[1], x).view(-1, 1, 1, 1)
    bitmap = (big > t).to(x.dtype)
    thick = (torch.rand(n) < thicken).to(x.device).view(-1, 1, 1, 1)
    bitmap = torch.where(thick, F.max_pool2d(bitmap, 3, 1, 1), bitmap)
    small = (F.avg_pool2d(bitmap, 4) * levels).round() / levels
    up = F.interpolate(small * 255, size=(box, box), mode="bilinear", align_corners=False, antialias=True)
    up = up.round().clamp(0, 255) / 255
    lo = (h - box) // 2
    return F.pad(up, (lo, h - box - lo, lo, h - box - lo))


def compose(*ops: Aug) -> Aug:
    def run(x: torch.Tensor) -> torch.Tensor:
        for op in ops:
            x = op(x)
        return x

    return run


class Augmented(Method):
    """Wraps a Method: its source (and optionally target) batches pass through `source_aug`
    (`target_aug`) before the inner method sees them. Everything else is the inner method's."""

    def __init__(self, inner: Method, source_aug: Aug | None = None, target_aug: Aug | None = None,
                 description: str = ""):
        if not isinstance(inner, Method):
            raise TypeError(f"inner must be a Method, got {type(inner).__name__}")
        self.inner, self.source_aug, self.target_aug = inner, source_aug, target_aug
        self.description = description
        self.name = inner.name
        self.streams = inner.streams
        self.uses_target_labels = inner.uses_target_labels

    def setup(self, engine: Any) -> None:
        self.inner.setup(engine)

    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules()

    def phases(self, net: nn.Module, batch: dict, step: StepInfo):
        batch = dict(batch)
        for stream, aug in (("source", self.source_aug), ("target", self.target_aug)):
            if aug is not None and stream in batch and batch[stream]["x"].dim() == 4:
                with torch.no_grad():
                    batch[stream] = {**batch[stream], "x": aug(batch[stream]["x"])}
        return self.inner.phases(net, batch, step)

    def on_epoch_start(self, engine: Any) -> None:
        self.inner.on_epoch_start(engine)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state)

    def config(self) -> dict[str, Any]:
        return {**self.inner.config(), "augment": self.description or "custom"}


# --- test time --------------------------------------------------------------------------------

FLIP_VIEWS = {
    "none": (lambda x: x,),
    "hflip": (lambda x: x, lambda x: x.flip(3)),
    "flips": (lambda x: x, lambda x: x.flip(3), lambda x: x.flip(2), lambda x: x.flip(2).flip(3)),
}


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, tta: str = "none", batch_size: int = 128) -> torch.Tensor:
    """Softmax probabilities averaged over flip views: p(x) = 1/V sum_v softmax(f(view_v(x)))."""
    _check_images(x, "x")
    if tta not in FLIP_VIEWS:
        raise ValueError(f"unknown tta {tta!r}; use one of {', '.join(FLIP_VIEWS)}")
    views = FLIP_VIEWS[tta]
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        p = sum(torch.softmax(forward_chunked(model, v(xb)).float(), 1) for v in views) / len(views)
        out.append(p.cpu())
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def adabn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """AdaBN (Li et al. 2016): replace every BatchNorm's running mean/var by the statistics of the
    given (target) batches: mu = E[h], var = E[(h - mu)^2] over all target pixels, cumulative
    average over batches (momentum=None). Weights are unchanged; the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("adabn: the model has no BatchNorm layer")
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    dev = next(model.parameters()).device
    seen = 0
    try:
        for xb in batches:
            model(xb.to(dev))
            seen += len(xb)
    finally:
        for m, (mom, _) in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
    if seen == 0:
        raise ValueError("adabn: no batch given")
    return model
