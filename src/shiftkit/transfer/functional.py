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

import functools
import math
import os

import numpy as np
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
    b = fda_half_size(height, width, beta)
    ky = torch.fft.fftfreq(height, d=1.0 / height, device=device).round().abs()
    kx = torch.fft.rfftfreq(width, d=1.0 / width, device=device).round().abs()
    return (ky[:, None] <= b) & (kx[None, :] <= b)


def fda(src: torch.Tensor, tgt: torch.Tensor, beta: float = 0.01, clamp: bool = True, method: str = "auto") -> torch.Tensor:
    """Fourier domain adaptation (Yang & Soatto, CVPR 2020): the target's low-frequency amplitude, the source's phase.

    Per image and channel, with F = rfft2, A = |F|, P = angle(F) and M the window of `fda_window`:

        out = irfft2( (M * A(tgt) + (1 - M) * A(src)) * exp(i * P(src)) )
            = src + irfft2( M * (A(tgt) / A(src) - 1) * F(src) )

    A target of another size is resized to the source's size first; a target batch of 1 styles
    every source image. Phase (edges, geometry) is the source's, so masks and boxes stay valid.
    `clamp` clips the result to [0, 1] (swapped amplitudes can overshoot slightly).

    `method`: "fft" computes full FFTs; "dft" evaluates only the window's few coefficients as thin
    matrix products with cos/sin bases (the second form above, O(H W b) instead of O(H W log HW):
    much faster for the usual small beta); "auto" picks "dft" when b <= 8. Both are exact and
    differentiable in both inputs.
    """
    check_images(src, "source")
    tgt = prepare_target(src, tgt, resize=True)
    if method not in ("auto", "fft", "dft"):
        raise ValueError(f"method must be auto, fft or dft, got {method!r}")
    h, w = src.shape[-2:]
    mask = fda_window(h, w, beta, device=src.device)
    if not bool(mask.any()):
        return src.clamp(0, 1) if clamp else src
    b = fda_half_size(h, w, beta)
    if method == "dft" or (method == "auto" and b <= 8):
        out = _fda_dft(src, tgt, b)
    else:
        fs = torch.fft.rfft2(src, norm="backward")
        ft = torch.fft.rfft2(tgt, norm="backward")
        amp_s = fs.abs()
        ratio = torch.where(amp_s > 0, ft.abs() / amp_s.clamp_min(1e-30), torch.zeros_like(amp_s))
        # inside the window: |F_t| * F_s / |F_s| (and |F_t| itself where F_s = 0, whose phase is 0)
        new = torch.where(mask & (amp_s > 0), fs * ratio, torch.where(mask, ft.abs().to(fs.dtype).expand_as(fs), fs))
        out = torch.fft.irfft2(new, s=(h, w), norm="backward")
    return out.clamp(0, 1) if clamp else out


@functools.lru_cache(maxsize=16)
def _fda_bases(h: int, w: int, b: int, dtype: torch.dtype, device: torch.device):
    """The DFT restricted to FDA's window (see `_fda_dft`), cached per image size: rows R = {|ky| <= b}
    as cos/sin (H, R) matrices, columns C = {0..b} as [cos | sin] (W, 2C), and the rfft column weights."""
    def bases(n: int, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.arange(n, dtype=torch.float64, device=device)
        ang = 2 * math.pi * torch.outer(x, freqs.to(torch.float64)) / n
        return ang.cos().to(dtype), ang.sin().to(dtype)

    ky = torch.fft.fftfreq(h, d=1.0 / h, device=device).round()
    kx = torch.fft.rfftfreq(w, d=1.0 / w, device=device).round()
    rows, cols = ky[ky.abs() <= b], kx[kx <= b]
    ac, as_ = bases(h, rows)
    bc, bs = bases(w, cols)
    weight = torch.where((cols == 0) | ((w % 2 == 0) & (cols == w // 2)), 1.0, 2.0).to(dtype)
    return ac, as_, torch.cat([bc, bs], dim=1), weight


def _fda_coefficients(x: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (B, C, R, C') of the window's DFT coefficients of x:
    X = (Ac - i As) x (Bc - i Bs) = (Ac x Bc - As x Bs) - i (Ac x Bs + As x Bc)."""
    ac, as_, bcs, _ = _fda_bases(x.shape[-2], x.shape[-1], b, x.dtype, x.device)
    p = x @ bcs  # (B, C, H, 2C'): x Bc | x Bs
    n = bcs.shape[1] // 2
    pc, ps = p[..., :n], p[..., n:]
    return ac.T @ pc - as_.T @ ps, -(ac.T @ ps + as_.T @ pc)


def fda_window_amplitude(tgt: torch.Tensor, b: int) -> torch.Tensor:
    """|T| over FDA's window of half-size b (see `fda_window`): (B, C, 2b+1, b+1) for a batch (B, C, H, W)."""
    tr, ti = _fda_coefficients(tgt, b)
    return torch.sqrt(tr * tr + ti * ti)


def fda_with_amplitude(src: torch.Tensor, amp_t: torch.Tensor, b: int) -> torch.Tensor:
    """FDA of `src` given the target's window amplitude (`fda_window_amplitude` of a target of the
    same size): only the source's window coefficients are computed. Linear in the pixel scale, so
    uint8-range floats work as well as [0, 1]. Not clamped.

    With D = M (|T| / |X| - 1) X (and |T| with phase 0 where X = 0) and c_kx = 1 for kx in
    {0, W/2}, else 2 (rfft symmetry):  out = x + Re( A^H (c * D) B^H ) / (H W).
    """
    h, w = src.shape[-2:]
    ac, as_, bcs, weight = _fda_bases(h, w, b, src.dtype, src.device)
    xr, xi = _fda_coefficients(src, b)
    amp_x = torch.sqrt(xr * xr + xi * xi)
    nz = amp_x > 0
    ratio = torch.where(nz, amp_t / torch.where(nz, amp_x, torch.ones_like(amp_x)), torch.zeros_like(amp_x))
    # new coefficient: ratio * X (or |T| with phase 0 where X = 0); D = new - X
    dr = torch.where(nz, (ratio - 1) * xr, amp_t - xr) * weight
    di = torch.where(nz, (ratio - 1) * xi, -xi) * weight
    # M = A^H E = (Ac^T + i As^T)(Er + i Ei) -> (H, C'); out_delta = Mr Bc^T - Mi Bs^T
    mr = ac @ dr - as_ @ di
    mi = ac @ di + as_ @ dr
    delta = torch.cat([mr, -mi], dim=-1) @ bcs.T
    return src + delta / (h * w)


def _fda_dft(src: torch.Tensor, tgt: torch.Tensor, b: int) -> torch.Tensor:
    """FDA through the window's coefficients only (see `fda`); exact up to float rounding."""
    return fda_with_amplitude(src, fda_window_amplitude(tgt, b), b)


def fda_half_size(height: int, width: int, beta: float) -> int:
    """Half-size b of FDA's window, floor(min(H, W) * beta); -1 for beta = 0 (the empty window)."""
    return int(math.floor(min(height, width) * float(beta))) if beta > 0 else -1


# --------------------------------------------------------------------------- histogram matching
def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Quantise [0, 1] floats to uint8 levels 0..255 (uint8), round-half-to-even like numpy."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def check_uint8_images(x: object, name: str = "images") -> torch.Tensor:
    """Validate a (B, C, H, W) uint8 batch with C in {1, 3}."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 here, got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.numel() == 0:
        raise ValueError(f"{name} must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    return x


def _rows_u8(x: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    return x.reshape(b * c, -1)  # copies only when x is a non-contiguous view


def _opencv():
    """OpenCV when installed (the `fast` extra) and not disabled by SHIFTKIT_NO_OPENCV=1, else None.

    Only its uint8 histogram and lookup-table kernels are used: they read interleaved (H, W, C)
    pixels in place, where numpy would first widen every pixel to int64."""
    if os.environ.get("SHIFTKIT_NO_OPENCV", "") not in ("", "0"):
        return None
    try:
        import cv2
    except ImportError:
        return None
    return cv2


_CV2_MAX_PIXELS = 1 << 24  # calcHist counts in float32: exact below 2**24 pixels per channel


def histogram_uint8_into(img: torch.Tensor, out: np.ndarray) -> None:
    """256-bin counts of each channel of one uint8 CPU image (C, H, W) into `out` (C, 256).

    OpenCV's `calcHist` reads the image in its own memory layout (a channels-last view of a decoded
    (H, W, C) array is not copied); without OpenCV, torch's `bincount` counts uint8 directly
    (numpy's would widen every pixel to int64 first)."""
    c, h, w = img.shape
    cv2 = _opencv() if h * w < _CV2_MAX_PIXELS else None
    if cv2 is not None:
        hwc = img.permute(1, 2, 0)
        if hwc.is_contiguous():
            arr = hwc.numpy()
            for ch in range(c):
                out[ch] = cv2.calcHist([arr], [ch], None, [256], [0, 256]).ravel()
            return
        if img.is_contiguous():
            arr = img.numpy()
            for ch in range(c):
                out[ch] = cv2.calcHist([arr[ch]], [0], None, [256], [0, 256]).ravel()
            return
    for ch in range(c):
        out[ch] = torch.bincount(img[ch].reshape(-1), minlength=256).numpy()


def histograms_uint8(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel 256-bin counts of a uint8 batch: (B, C, H, W) -> (B, C, 256) int64.

    CUDA: one `bincount` over offset levels (level + 256 * row). CPU: `histogram_uint8_into` per image.
    """
    check_uint8_images(x)
    b, c = x.shape[:2]
    if x.device.type != "cpu":
        rows = _rows_u8(x)
        offs = torch.arange(b * c, device=x.device).view(-1, 1) * 256
        return torch.bincount((rows.long() + offs).view(-1), minlength=b * c * 256).view(b, c, 256)
    out = np.empty((b, c, 256), dtype=np.int64)
    for k in range(b):
        histogram_uint8_into(x[k], out[k])
    return torch.from_numpy(out)


def histograms(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-image, per-channel 256-bin histograms of the uint8 levels of a float batch in [0, 1]:
    (B, C, H, W) -> (B, C, 256) float64; `normalize` divides by H * W so each row sums to 1."""
    check_images(x)
    h = histograms_uint8(to_levels(x)).to(torch.float64)
    return h / (x.shape[-1] * x.shape[-2]) if normalize else h


def cdf_from_hist(hist: torch.Tensor) -> torch.Tensor:
    """Cumulative distribution of 256-bin histograms (..., 256), normalised so the last bin is 1."""
    hist = hist.to(torch.float64)
    cdf = hist.cumsum(-1)
    return cdf / cdf[..., -1:].clamp_min(1e-12)


def _check_ref_hist(ref_hist: object, b: int, c: int, device) -> torch.Tensor:
    if not isinstance(ref_hist, torch.Tensor):
        raise ValueError(f"ref_hist must be a torch.Tensor, got {type(ref_hist).__name__}")
    ref = ref_hist.to(device)
    if ref.ndim == 2:
        ref = ref.unsqueeze(0)
    if ref.ndim != 3 or ref.shape[-1] != 256 or ref.shape[1] != c or ref.shape[0] not in (1, b):
        raise ValueError(f"ref_hist must have shape ({b} or 1, {c}, 256), got {tuple(ref_hist.shape)}")
    if bool((ref < 0).any()) or bool((ref.sum(-1) <= 0).any()):
        raise ValueError("ref_hist must be non-negative with a positive total per channel")
    return ref


def matching_lut(src_hist: torch.Tensor, ref_hist: torch.Tensor) -> torch.Tensor:
    """256-entry lookup tables (B, C, 256) uint8: LUT[v] = min{u : F_r(u) >= F_s(v)} (see `histogram_match`)."""
    b, c = src_hist.shape[:2]
    ref_cdf = cdf_from_hist(ref_hist).expand(b, c, 256).reshape(b * c, 256).contiguous()
    src_cdf = cdf_from_hist(src_hist).reshape(b * c, 256)
    # tolerance against float noise in cumulative sums: a level matches once F_r >= F_s - eps
    query = (src_cdf - 1e-9).contiguous()
    if ref_cdf.device.type == "cpu":  # numpy's per-row search is about 2x torch's batched one on CPU
        r, q = ref_cdf.numpy(), query.numpy()
        lut = torch.from_numpy(np.stack([np.searchsorted(r[k], q[k], side="left") for k in range(r.shape[0])]))
    else:
        lut = torch.searchsorted(ref_cdf, query, side="left")
    return lut.clamp_(0, 255).to(torch.uint8).view(b, c, 256)


def apply_lut_uint8(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """out[b, c] = lut[b, c][x[b, c]] for a uint8 batch and (B, C, 256) uint8 tables.

    On CPU with OpenCV, a channels-last batch (decoded (B, H, W, C) images, permuted) is looked up
    in place and returned channels-last, with no transposing copy either way."""
    b, c = x.shape[:2]
    if x.device.type != "cpu":
        rows = _rows_u8(x)
        return torch.gather(lut.reshape(b * c, 256).long(), 1, rows.long()).to(torch.uint8).view(x.shape)
    cv2 = _opencv()
    if cv2 is not None and c > 1 and x.is_contiguous(memory_format=torch.channels_last):
        tables = lut.reshape(b, c, 256).permute(0, 2, 1).contiguous().numpy()  # (B, 256, C): cv2's layout
        src, out = x.permute(0, 2, 3, 1).numpy(), np.empty((b, *x.shape[2:], c), dtype=np.uint8)
        for k in range(b):
            cv2.LUT(src[k], tables[k].reshape(1, 256, c), dst=out[k])
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    r, t = _rows_u8(x).numpy(), lut.reshape(b * c, 256).contiguous().numpy()
    res = np.empty_like(r)
    for k in range(r.shape[0]):
        if cv2 is not None:
            cv2.LUT(r[k], t[k], dst=res[k])
        else:
            np.take(t[k], r[k], out=res[k])
    return torch.from_numpy(res).view(x.shape)


def histogram_match_uint8(src: torch.Tensor, ref_hist: torch.Tensor) -> torch.Tensor:
    """`histogram_match` on a uint8 batch, returning uint8: no float copies of the pixels at all."""
    check_uint8_images(src, "source")
    b, c = src.shape[:2]
    ref = _check_ref_hist(ref_hist, b, c, src.device)
    return apply_lut_uint8(src, matching_lut(histograms_uint8(src), ref))


def histogram_match(src: torch.Tensor, ref_hist: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching of a batch to reference histograms, through 256-entry lookup tables.

    With F_s the CDF of a source image channel and F_r the reference CDF (both on levels 0..255):

        LUT[v] = min{ u : F_r(u) >= F_s(v) },      out = LUT[round(255 * src)] / 255

    so the output's CDF equals F_r up to the mass of a single source level
    (|F_out(u) - F_r(u)| <= max_v p_s(v)). `ref_hist` is (B, C, 256), (1, C, 256) or (C, 256)
    (e.g. a target set's mean histogram), unnormalised counts or probabilities, channels already
    matched to the source's (see `match_channels`). Output values lie on the uint8 grid.
    Not differentiable (it quantises). `histogram_match_uint8` is the same on uint8 tensors.
    """
    check_images(src, "source")
    b, c = src.shape[:2]
    _check_ref_hist(ref_hist, b, c, src.device)
    return histogram_match_uint8(to_levels(src), ref_hist).to(src.dtype) / 255.0


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
