"""Label-preserving augmentation maths, one pure function per op.

Conventions: `images` float (B, C, H, W) in [0, 1]; `masks` (B, H, W) integer class ids or None;
`boxes` a list of B float tensors (N_i, 4) in absolute pixel xyxy, or None. Geometric ops move
masks and boxes with the pixels (masks by nearest neighbour, so ids are never blended); photometric
ops touch the image only. Box coordinates are pixel *edges*: a box covering columns x1..x2-1 has
x1 <= x < x2, so a flip maps it to W - x2 .. W - x1 exactly.

Parameters are per sample (tensors of shape (B,)), drawn by the caller from a seeded generator,
so a rerun with the same seed reproduces every output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
BoxList = list[Tensor] | None


def _check_images(images: Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, C, H, W), got {getattr(images, 'shape', type(images))}")


def _luminance(images: Tensor) -> Tensor:
    if images.shape[1] == 3:
        w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)


# --- geometric ------------------------------------------------------------------------------------


def hflip(images: Tensor, masks: Tensor | None = None, boxes: BoxList = None):
    """Mirror left-right: x -> W - x for box edges."""
    _check_images(images)
    w = images.shape[-1]
    out_boxes = None if boxes is None else [torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) for b in boxes]
    return images.flip(-1), None if masks is None else masks.flip(-1), out_boxes


def vflip(images: Tensor, masks: Tensor | None = None, boxes: BoxList = None):
    """Mirror top-bottom: y -> H - y for box edges."""
    _check_images(images)
    h = images.shape[-2]
    out_boxes = None if boxes is None else [torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], 1) for b in boxes]
    return images.flip(-2), None if masks is None else masks.flip(-2), out_boxes


def rot90(images: Tensor, masks: Tensor | None = None, boxes: BoxList = None, k: int = 1):
    """Rotate by k * 90 degrees counter-clockwise (same k for the batch; non-square images swap H, W).

    One quarter turn maps a point (x, y) of a W-wide image to (y, W - x), so a box
    (x1, y1, x2, y2) becomes (y1, W - x2, y2, W - x1).
    """
    _check_images(images)
    k = int(k) % 4
    out_boxes = boxes
    for _ in range(k):
        w = images.shape[-1]
        images = torch.rot90(images, 1, dims=(-2, -1))
        masks = None if masks is None else torch.rot90(masks, 1, dims=(-2, -1))
        if out_boxes is not None:
            out_boxes = [torch.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1) for b in out_boxes]
    return images, masks, out_boxes


def crop_resize(
    images: Tensor,
    masks: Tensor | None,
    boxes: BoxList,
    crops: Tensor,
    size: tuple[int, int],
    min_box_side: float = 1.0,
):
    """Crop each sample to `crops[i] = (top, left, height, width)` (integers) and resize to `size`.

    Images resize bilinearly (antialiased), masks by nearest neighbour. Boxes are shifted by the
    crop origin, clipped to the crop, scaled by size / crop size; boxes thinner than
    `min_box_side` pixels after that are dropped. Returns (images, masks, boxes, keeps) where
    keeps[i] is the boolean mask of sample i's surviving boxes (to drop their labels too).
    """
    _check_images(images)
    crops = torch.as_tensor(crops, dtype=torch.long).reshape(-1, 4)
    if len(crops) != len(images):
        raise ValueError(f"{len(crops)} crops for {len(images)} images")
    out_h, out_w = int(size[0]), int(size[1])
    H, W = images.shape[-2:]
    if (crops[:, 2] <= 0).any() or (crops[:, 3] <= 0).any() or (crops[:, 0] < 0).any() or (crops[:, 1] < 0).any():
        raise ValueError("crop height/width must be positive and origin non-negative")
    if ((crops[:, 0] + crops[:, 2]) > H).any() or ((crops[:, 1] + crops[:, 3]) > W).any():
        raise ValueError(f"crop exceeds the image ({H}x{W})")
    out_imgs, out_masks, out_boxes, keeps = [], [], [], []
    for i, (t, l, h, w) in enumerate(crops.tolist()):
        img = images[i : i + 1, :, t : t + h, l : l + w]
        out_imgs.append(F.interpolate(img, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True))
        if masks is not None:
            m = masks[i : i + 1, None, t : t + h, l : l + w].float()
            out_masks.append(F.interpolate(m, size=(out_h, out_w), mode="nearest")[:, 0].to(masks.dtype))
        if boxes is not None:
            b = boxes[i].clone()
            b[:, [0, 2]] = (b[:, [0, 2]] - l).clamp(0, w) * (out_w / w)
            b[:, [1, 3]] = (b[:, [1, 3]] - t).clamp(0, h) * (out_h / h)
            keep = ((b[:, 2] - b[:, 0]) >= min_box_side) & ((b[:, 3] - b[:, 1]) >= min_box_side)
            keeps.append(keep)
            out_boxes.append(b[keep])
    imgs = torch.cat(out_imgs).clamp(0, 1)
    return imgs, None if masks is None else torch.cat(out_masks), None if boxes is None else out_boxes, keeps


# --- photometric ----------------------------------------------------------------------------------


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Multiply intensities by `factor` (per sample): x' = clip(x * f)."""
    _check_images(images)
    return (images * factor.view(-1, 1, 1, 1).to(images)).clamp(0, 1)


def brightness_to(images: Tensor, target: Tensor) -> Tensor:
    """Move each image's mean luminance to `target` (per sample), the op a sensitivity plan asks for.

    An exposure change in logit space, x' = sigmoid(logit(x) + b), with b per sample found by
    bisection so that mean luminance(x') = t. It is strictly increasing (keeps the content's order),
    never saturates, and keeps local contrast where it lives (dx'/dx = x'(1-x') / (x(1-x))): real
    bright ELPV cells are as contrasted as dark ones (std 0.09-0.12 from mean 0.35 to 0.8), whereas
    mixing toward white, x + (1-x)a, divides contrast by up to 3 and washes defects out.
    """
    _check_images(images)
    t = target.view(-1).to(images).clamp(1e-3, 1 - 1e-3)
    eps = 1e-4
    z = torch.logit(images.clamp(eps, 1 - eps))
    w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1) if images.shape[1] == 3 else None

    def mean_lum(b: Tensor) -> Tensor:
        y = torch.sigmoid(z + b.view(-1, 1, 1, 1))
        return ((y * w).sum(1) if w is not None else y.mean(1)).mean((1, 2))

    lo, hi = torch.full_like(t, -20.0), torch.full_like(t, 20.0)
    for _ in range(40):  # the mean is increasing in b: 40 halvings of [-20, 20] reach ~4e-11
        mid = (lo + hi) / 2
        up = mean_lum(mid) < t
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return torch.sigmoid(z + ((lo + hi) / 2).view(-1, 1, 1, 1))


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Scale deviations from each image's mean luminance: x' = clip(m + f (x - m))."""
    _check_images(images)
    m = _luminance(images).mean((2, 3), keepdim=True)
    return (m + factor.view(-1, 1, 1, 1).to(images) * (images - m)).clamp(0, 1)


def gamma(images: Tensor, g: Tensor) -> Tensor:
    """Gamma curve x' = x ** g (g < 1 brightens shadows, g > 1 darkens them)."""
    _check_images(images)
    return images.clamp_min(1e-8) ** g.view(-1, 1, 1, 1).to(images)


def blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur with per-sample sigma (pixels); sigma 0 leaves a sample unchanged."""
    _check_images(images)
    sigma = sigma.to(images).reshape(-1)
    smax = float(sigma.max()) if len(sigma) else 0.0
    if smax <= 0:
        return images
    k = 2 * math.ceil(3 * smax) + 1
    s = sigma.clamp_min(1e-3)
    out = kornia.filters.gaussian_blur2d(images, (k, k), torch.stack([s, s], 1), border_type="reflect")
    return torch.where((sigma > 0).view(-1, 1, 1, 1), out, images)


def sharpen(images: Tensor, factor: Tensor) -> Tensor:
    """Unsharp-style sharpness adjustment (kornia.enhance.sharpness): 0 = smoothed, 1 = identity, >1 sharper."""
    _check_images(images)
    return kornia.enhance.sharpness(images, factor.to(images)).clamp(0, 1)


def noise(images: Tensor, std: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise with per-sample standard deviation."""
    _check_images(images)
    eps = torch.randn(images.shape, generator=generator, device="cpu").to(images)
    return (images + eps * std.view(-1, 1, 1, 1).to(images)).clamp(0, 1)


def saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Scale colour saturation (RGB only; grayscale images are returned unchanged)."""
    _check_images(images)
    if images.shape[1] != 3:
        return images
    return kornia.enhance.adjust_saturation(images, factor.to(images)).clamp(0, 1)


def hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by `shift` in [-0.5, 0.5] turns (RGB only)."""
    _check_images(images)
    if images.shape[1] != 3:
        return images
    return kornia.enhance.adjust_hue(images, shift.to(images) * 2 * math.pi).clamp(0, 1)


# --- random recolouring for training (one call per batch; the labels never move) -------------------


def photometric_transform(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, perm: torch.Tensor,
                          gray: torch.Tensor, invert: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image colour change of x (N, C, H, W) in [0, 1], image n by its own (b_n, c_n, pi_n, g_n, i_n):
        u = clamp(c_n (x_n - xbar_n) + xbar_n + b_n, 0, 1),  xbar_n = mean of x_n over channels and pixels,
        v = u[pi_n]  (channels permuted),   w = mean_k v_k on every channel if g_n else v,
        x'_n = 1 - w if i_n (polarity inverted: dark strokes on light ground become light on dark) else w.
    brightness, contrast (N,), perm (N, C) channel orders, gray and invert (N,) bool (invert None: none).
    Pixel positions never move, so pixel labels stay valid."""
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    n, ch = x.shape[:2]
    if brightness.shape != (n,) or contrast.shape != (n,) or gray.shape != (n,) or perm.shape != (n, ch):
        raise ValueError(f"need brightness, contrast, gray of shape ({n},) and perm ({n}, {ch})")
    if invert is not None and invert.shape != (n,):
        raise ValueError(f"invert must have shape ({n},), got {tuple(invert.shape)}")
    if bool((torch.sort(perm.long(), dim=1).values != torch.arange(ch, device=perm.device)).any()):
        raise ValueError(f"each perm row must be an order of the channels 0..{ch - 1}")
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    u = (contrast.view(n, 1, 1, 1) * (x - mean) + mean + brightness.view(n, 1, 1, 1)).clamp(0.0, 1.0)
    v = torch.gather(u, 1, perm.long().view(n, ch, 1, 1).expand_as(u))
    w = torch.where(gray.view(n, 1, 1, 1).to(torch.bool), v.mean(dim=1, keepdim=True).expand_as(v), v)
    return w if invert is None else torch.where(invert.view(n, 1, 1, 1).to(torch.bool), 1.0 - w, w)


def random_photometric(x: torch.Tensor, strength: float, generator: torch.Generator | None = None,
                       invert: float = 0.0) -> torch.Tensor:
    """`photometric_transform` with b_n ~ U(-s, s), c_n ~ U(1 - s, 1 + s), pi_n a uniform random channel order,
    g_n ~ Bernoulli(s / 2), s = strength in [0, 1], and i_n ~ Bernoulli(invert); s = 0 and invert = 0 return x
    unchanged. Draws on CPU from `generator` (nothing drawn for i_n when invert = 0, so the other draws keep
    their sequence)."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if not 0.0 <= float(invert) <= 1.0:
        raise ValueError(f"invert must be a probability in [0, 1], got {invert}")
    if strength == 0 and invert == 0:
        return x
    n, ch = x.shape[:2]
    s = float(strength)
    b = (torch.rand(n, generator=generator) * 2 - 1) * s
    c = 1 + (torch.rand(n, generator=generator) * 2 - 1) * s
    perm = (torch.stack([torch.randperm(ch, generator=generator) for _ in range(n)]) if s > 0
            else torch.arange(ch).expand(n, ch))  # strength 0: colours kept, only the inversion
    g = torch.rand(n, generator=generator) < s / 2
    i = torch.rand(n, generator=generator) < float(invert) if invert > 0 else None
    d = x.device
    return photometric_transform(x, b.to(d), c.to(d), perm.to(d), g.to(d), None if i is None else i.to(d))


PhotometricFn = Callable[..., Tensor]

PHOTOMETRIC_OPS: dict[str, PhotometricFn] = {
    "brightness": brightness,
    "brightness_to": brightness_to,
    "contrast": contrast,
    "gamma": gamma,
    "blur": blur,
    "sharpen": sharpen,
    "noise": noise,
    "saturation": saturation,
    "hue": hue,
}
GEOMETRIC_OPS = ("hflip", "vflip", "rot90", "crop")


def apply_op(name: str, images: Tensor, param: Tensor, masks=None, boxes=None, generator=None):
    """Apply one named photometric op with per-sample `param`; geometry ops go through their own functions."""
    if name not in PHOTOMETRIC_OPS:
        raise ValueError(f"unknown photometric op {name!r}; known: {', '.join(PHOTOMETRIC_OPS)}")
    fn = PHOTOMETRIC_OPS[name]
    out = fn(images, param, generator=generator) if name == "noise" else fn(images, param)
    return out, masks, boxes
