"""Training-free domain transfer as pure batched tensor maths.

Every function takes images as float tensors (B, C, H, W) in [0, 1], C in {1, 3}, on any device,
and returns the same shape as the *source*. Nothing here reads files or keeps state: the classes in
`shiftkit.transfer.methods` and the streaming pipeline build on these.

Grayscale <-> RGB between domains (decided once, used by every method): the output always keeps
the SOURCE's channel count, so the dataset's format and labels stay valid. A target is first
brought to the source's channel count with `match_channels`: an RGB target seen by a gray source
is reduced to its luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B); a gray target seen by an RGB
source is replicated to three equal channels, so the RGB source is styled towards a neutral-gray
look (its colour is pulled to the target's, which has none) while staying a 3-channel file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- validation and helpers
def check_images(x: object, name: str = "images") -> torch.Tensor:
    """Validate a (B, C, H, W) floating batch with C in {1, 3}; raise ValueError saying what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    return x


def _check_pair_batch(src: torch.Tensor, tgt: torch.Tensor) -> None:
    if tgt.shape[0] not in (1, src.shape[0]):
        raise ValueError(f"target batch has {tgt.shape[0]} images but source has {src.shape[0]}: give one target per source image, or a single target for all")


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance Y = 0.299 R + 0.587 G + 0.114 B of an RGB batch (B, 3, H, W) -> (B, 1, H, W)."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Bring a batch to `channels` (1 or 3): RGB -> luminance, gray -> three equal channels."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        return to_gray(x)
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (antialiased when shrinking) to (H, W); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def prepare_target(src: torch.Tensor, tgt: torch.Tensor, resize: bool = False) -> torch.Tensor:
    """Validate `tgt` against `src`, match its channel count (and size when `resize`), move it to src's device/dtype."""
    check_images(tgt, "target")
    _check_pair_batch(src, tgt)
    tgt = match_channels(tgt.to(device=src.device, dtype=src.dtype), src.shape[1])
    if resize:
        tgt = resize_to(tgt, (src.shape[-2], src.shape[-1]))
    return tgt


# --------------------------------------------------------------------------- FDA
def fda_window(height: int, width: int, beta: float, device=None) -> torch.Tensor:
    """Boolean mask (H, W//2+1) over `rfft2` coefficients: the low-frequency square that FDA swaps.

    With b = floor(min(H, W) * beta), the window is {(ky, kx): |ky| <= b, |kx| <= b} in integer
    frequencies, i.e. the centred square of half-size b of the fftshift-ed spectrum
    (rows c_h-b .. c_h+b, cols c_w-b .. c_w+b with c = floor(N/2)), exactly the window of Yang &
    Soatto's reference code. beta = 0 is defined as the empty window (the identity); any beta > 0
    swaps at least the DC term, as the reference does. beta = 1 covers the whole spectrum.
    """
    if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) <= 1.0) or math.isnan(float(beta)):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
    if beta == 0:
        return torch.zeros(height, width // 2 + 1, dtype=torch.bool, device=device)
    b = int(math.floor(min(height, width) * float(beta)))
    ky = torch.fft.fftfreq(height, d=1.0 / height, device=device).round().abs()
    kx = torch.fft.rfftfreq(width, d=1.0 / width, device=device).round().abs()
    return (ky[:, None] <= b) & (kx[None, :] <= b)


def fda(src: torch.Tensor, tgt: torch.Tensor, beta: float = 0.01, clamp: bool = True) -> torch.Tensor:
    """Fourier domain adaptation (Yang & Soatto, CVPR 2020): the target's low-frequency amplitude, the source's phase.

    Per image and channel, with F = rfft2, A = |F|, P = angle(F) and M the window of `fda_window`:

        out = irfft2( (M * A(tgt) + (1 - M) * A(src)) * exp(i * P(src)) )

    A target of another size is resized to the source's size first; a target batch of 1 styles
    every source image. Phase (edges, geometry) is the source's, so masks and boxes stay valid.
    `clamp` clips the result to [0, 1] (swapped amplitudes can overshoot slightly).
    Differentiable in both inputs.
    """
    check_images(src, "source")
    tgt = prepare_target(src, tgt, resize=True)
    h, w = src.shape[-2:]
    mask = fda_window(h, w, beta, device=src.device)
    if not bool(mask.any()):
        return src.clamp(0, 1) if clamp else src
    fs = torch.fft.rfft2(src, norm="backward")
    ft = torch.fft.rfft2(tgt, norm="backward")
    amp = torch.where(mask, ft.abs().expand_as(fs), fs.abs())
    out = torch.fft.irfft2(torch.polar(amp, fs.angle()), s=(h, w), norm="backward")
    return out.clamp(0, 1) if clamp else out


# --------------------------------------------------------------------------- histogram matching
def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Quantise [0, 1] floats to uint8 levels 0..255 (int64), round-half-to-even like numpy."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.int64)


def histograms(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-image, per-channel 256-bin histograms of the uint8 levels: (B, C, H, W) -> (B, C, 256).

    One `bincount` over offset levels (level + 256 * (b * C + c)) does the whole batch.
    `normalize` divides by H * W, so each row sums to 1.
    """
    check_images(x)
    b, c = x.shape[:2]
    lv = to_levels(x).reshape(b * c, -1)
    offs = torch.arange(b * c, device=x.device).view(-1, 1) * 256
    h = torch.bincount((lv + offs).view(-1), minlength=b * c * 256).view(b, c, 256).to(torch.float64)
    return h / lv.shape[1] if normalize else h


def cdf_from_hist(hist: torch.Tensor) -> torch.Tensor:
    """Cumulative distribution of 256-bin histograms (..., 256), normalised so the last bin is 1."""
    hist = hist.to(torch.float64)
    cdf = hist.cumsum(-1)
    return cdf / cdf[..., -1:].clamp_min(1e-12)


def histogram_match(src: torch.Tensor, ref_hist: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching of a batch to reference histograms, through 256-entry lookup tables.

    With F_s the CDF of a source image channel and F_r the reference CDF (both on levels 0..255):

        LUT[v] = min{ u : F_r(u) >= F_s(v) },      out = LUT[round(255 * src)] / 255

    so the output's CDF equals F_r up to the mass of a single source level
    (|F_out(u) - F_r(u)| <= max_v p_s(v)). `ref_hist` is (B, C, 256), (1, C, 256) or (C, 256)
    (e.g. a target set's mean histogram), unnormalised counts or probabilities, channels already
    matched to the source's (see `match_channels`). Output values lie on the uint8 grid.
    Not differentiable (it quantises).
    """
    check_images(src, "source")
    if not isinstance(ref_hist, torch.Tensor):
        raise ValueError(f"ref_hist must be a torch.Tensor, got {type(ref_hist).__name__}")
    b, c = src.shape[:2]
    ref = ref_hist.to(src.device)
    if ref.ndim == 2:
        ref = ref.unsqueeze(0)
    if ref.ndim != 3 or ref.shape[-1] != 256 or ref.shape[1] != c or ref.shape[0] not in (1, b):
        raise ValueError(f"ref_hist must have shape ({b} or 1, {c}, 256), got {tuple(ref_hist.shape)}")
    if bool((ref < 0).any()) or bool((ref.sum(-1) <= 0).any()):
        raise ValueError("ref_hist must be non-negative with a positive total per channel")
    ref_cdf = cdf_from_hist(ref).expand(b, c, 256).reshape(b * c, 256).contiguous()
    src_cdf = cdf_from_hist(histograms(src, normalize=False)).reshape(b * c, 256)
    # tolerance against float noise in cumulative sums: a level matches once F_r >= F_s - eps
    lut = torch.searchsorted(ref_cdf, (src_cdf - 1e-9).contiguous(), side="left").clamp_(0, 255)
    lv = to_levels(src).reshape(b * c, -1)
    out = torch.gather(lut, 1, lv).reshape(src.shape)
    return out.to(src.dtype) / 255.0


def histogram_match_images(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Histogram matching of each source image to its paired target image (batch of 1 = one for all)."""
    check_images(src, "source")
    tgt = prepare_target(src, tgt)
    return histogram_match(src, histograms(tgt))


# --------------------------------------------------------------------------- colour statistics (Reinhard)
def _lab(x: torch.Tensor) -> torch.Tensor:
    from kornia.color import rgb_to_lab

    return rgb_to_lab(match_channels(x, 3))


def lab_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean and std of L*, a*, b* (kornia's D65 Lab): (B, C, H, W) -> two (B, 3) tensors."""
    check_images(x)
    lab = _lab(x).flatten(2)
    return lab.mean(-1), lab.std(-1, unbiased=False).clamp_min(eps)


def color_stats(
    src: torch.Tensor,
    tgt_mean: torch.Tensor,
    tgt_std: torch.Tensor,
    clamp: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reinhard et al. (2001) colour transfer in CIE Lab, per image and channel k in {L*, a*, b*}:

        lab_out_k = (lab_k - mean_k(src)) / std_k(src) * std_k(tgt) + mean_k(tgt)

    then back to sRGB (clipped to [0, 1] when `clamp`). `tgt_mean`, `tgt_std` are (B, 3), (1, 3)
    or (3,) Lab statistics (from `lab_stats` of paired target images or of a whole set). A gray
    source is lifted to RGB, only L* is transferred (a* = b* = 0 stays neutral), and the result is
    returned as one channel. Differentiable.
    """
    check_images(src, "source")
    b, c = src.shape[:2]
    mt = torch.as_tensor(tgt_mean, dtype=src.dtype, device=src.device).reshape(-1, 3)
    st = torch.as_tensor(tgt_std, dtype=src.dtype, device=src.device).reshape(-1, 3)
    if mt.shape[0] not in (1, b) or st.shape[0] not in (1, b):
        raise ValueError(f"target statistics must be (B={b} or 1, 3), got mean {tuple(mt.shape)} std {tuple(st.shape)}")
    if bool((st < 0).any()):
        raise ValueError("target std must be non-negative")
    lab = _lab(src)
    ms = lab.flatten(2).mean(-1)
    ss = lab.flatten(2).std(-1, unbiased=False).clamp_min(eps)
    out = (lab - ms[..., None, None]) / ss[..., None, None] * st[..., None, None] + mt[..., None, None]
    if c == 1:
        out = torch.cat([out[:, :1], torch.zeros_like(out[:, 1:])], dim=1)
    from kornia.color import lab_to_rgb

    rgb = lab_to_rgb(out, clip=False)
    if c == 1:
        rgb = rgb.mean(dim=1, keepdim=True)
    return rgb.clamp(0, 1) if clamp else rgb


def color_stats_images(src: torch.Tensor, tgt: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """`color_stats` to each paired target image's own Lab mean/std."""
    check_images(src, "source")
    tgt = prepare_target(src, tgt)
    m, s = lab_stats(tgt)
    return color_stats(src, m, s, clamp=clamp)


# --------------------------------------------------------------------------- PCA pixel-distribution adaptation
def pixel_moments(x: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Streaming sufficient statistics of pixel colours: (n, sum (C,), sum of outer products (C, C)), float64.

    Add them over batches, then `moments_to_gaussian` gives the set's mean and covariance.
    """
    check_images(x)
    p = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)  # (C, N)
    return int(p.shape[1]), p.sum(1), p @ p.T


def moments_to_gaussian(n: int, s: torch.Tensor, ss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mu = s / n and covariance Sigma = ss / n - mu mu^T from `pixel_moments` sums."""
    if n <= 0:
        raise ValueError("no pixels were seen: cannot compute statistics of an empty set")
    mu = s / n
    cov = ss / n - torch.outer(mu, mu)
    return mu, (cov + cov.T) / 2


def _sym_pow(cov: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(0) + eps
    return (vecs * vals.pow(power)) @ vecs.T


def pca_matrix(src_cov: torch.Tensor, tgt_cov: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The colour map A = Sigma_t^(1/2) Sigma_s^(-1/2) (whiten with the source PCA, colour with the target's).

    Sigma^(+-1/2) = U diag(lambda + eps)^(+-1/2) U^T from the eigen-decomposition (PCA) of each
    covariance; the symmetric (ZCA) form fixes the rotation that plain PCA whitening leaves free,
    so A Sigma_s A^T = Sigma_t and A is the identity when the sets already agree.
    For one channel A = std_t / std_s.
    """
    if src_cov.shape != tgt_cov.shape or src_cov.ndim != 2 or src_cov.shape[0] != src_cov.shape[1]:
        raise ValueError(f"covariances must be square and equal in shape, got {tuple(src_cov.shape)} and {tuple(tgt_cov.shape)}")
    src_cov, tgt_cov = src_cov.to(torch.float64), tgt_cov.to(torch.float64)
    return _sym_pow(tgt_cov, 0.5, eps) @ _sym_pow(src_cov, -0.5, eps)


def pca_transfer(
    src: torch.Tensor,
    src_mean: torch.Tensor,
    src_cov: torch.Tensor,
    tgt_mean: torch.Tensor,
    tgt_cov: torch.Tensor,
    clamp: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Pixel-distribution adaptation: every pixel colour x (a C-vector) of the source set becomes

        x' = Sigma_t^(1/2) Sigma_s^(-1/2) (x - mu_s) + mu_t

    with (mu_s, Sigma_s), (mu_t, Sigma_t) the pixel-colour mean and covariance of the two whole
    sets (streamed with `pixel_moments`), so the source set's pixel mean and covariance become the
    target set's. One channel reduces to (x - mu_s) / std_s * std_t + mu_t. Differentiable.
    """
    check_images(src, "source")
    c = src.shape[1]
    for name, v, shape in (("src_mean", src_mean, (c,)), ("tgt_mean", tgt_mean, (c,)), ("src_cov", src_cov, (c, c)), ("tgt_cov", tgt_cov, (c, c))):
        if tuple(v.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for a {c}-channel source, got {tuple(v.shape)}")
    a = pca_matrix(src_cov, tgt_cov, eps).to(src.dtype).to(src.device)
    ms = src_mean.to(src.dtype).to(src.device).view(1, c, 1, 1)
    mt = tgt_mean.to(src.dtype).to(src.device).view(1, c, 1, 1)
    out = torch.einsum("ij,bjhw->bihw", a, src - ms) + mt
    return out.clamp(0, 1) if clamp else out
