"""Fréchet distance between two feature sets (the maths of FID, on any features).

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

for Gaussians N(mu_1, S_1), N(mu_2, S_2) fitted to the two sets. The trace of the matrix square
root is computed without `sqrtm`: S_1^(1/2) S_2 S_1^(1/2) is symmetric positive semi-definite and
has the same eigenvalues as S_1 S_2, so Tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(S_1^(1/2) S_2 S_1^(1/2))),
with S_1^(1/2) from a symmetric eigen-decomposition (float64; tiny negative eigenvalues from
rounding are clipped to 0). Works on CPU and CUDA tensors or numpy arrays.

`mobilenet_frechet` uses the pooled features (1280-d) of shiftkit's ImageNet MobileNetV2
(`shiftkit.models.features`, cached on disk). This is **not** Inception-FID: values are not
comparable with published FID figures, only with each other (same backbone, size and sets).
With fewer images than feature dimensions the covariances are rank-deficient; the distance is
still defined but biased upward for small sets, so compare sets of similar sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shiftkit.errors import ShiftkitError


def _as64(x: Any, name: str) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    t = t.detach().to(torch.float64)
    if not torch.isfinite(t).all():
        raise ShiftkitError(f"{name} holds NaN or infinite values")
    return t


def gaussian_stats(features: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64. Needs N >= 2."""
    f = _as64(features, "features")
    if f.ndim != 2:
        raise ShiftkitError(f"features must be (N, D), got shape {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ShiftkitError(f"a covariance needs at least 2 feature rows, got {f.shape[0]}")
    mu = f.mean(0)
    z = f - mu
    return mu, z.T @ z / (f.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (see the module doc)."""
    m1, m2 = _as64(mu1, "mu1"), _as64(mu2, "mu2")
    s1, s2 = _as64(sigma1, "sigma1"), _as64(sigma2, "sigma2")
    d = m1.shape[-1] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != m1.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ShiftkitError(f"need means (D,) and covariances (D, D) of one D, got {tuple(m1.shape)}, {tuple(s1.shape)}, "
                            f"{tuple(m2.shape)}, {tuple(s2.shape)}")
    s2 = s2.to(s1.device)
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    diff = m1 - m2.to(m1.device)
    fd = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_sqrt
    return float(fd.clamp_min(0))


def frechet_from_features(a: Any, b: Any) -> float:
    """Fréchet distance between the Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    if mu1.shape != mu2.shape:
        raise ShiftkitError(f"feature sets differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2)


def mobilenet_features(data: Any, size: int = 160, device: str = "auto", progress: bool = True, cache: bool = True,
                       model: Any = None) -> np.ndarray:
    """(N, 1280) pooled ImageNet MobileNetV2 features of a dataset folder, Dataset or list of Samples/arrays."""
    from shiftkit.analysis.features import backbone_features

    return backbone_features(data, "mobilenet_v2", size=size, device=device, progress=progress, cache=cache, model=model)


def mobilenet_frechet(a: Any, b: Any, size: int = 160, device: str = "auto", progress: bool = True, model: Any = None) -> dict[str, Any]:
    """Fréchet distance on MobileNetV2 features (not Inception-FID) between two image sets."""
    fa = mobilenet_features(a, size, device, progress, model=model)
    fb = mobilenet_features(b, size, device, progress, model=model)
    return {"frechet": frechet_from_features(fa, fb), "backbone": "mobilenet_v2 (ImageNet)", "size": size,
            "n_a": int(len(fa)), "n_b": int(len(fb)), "note": "Fréchet distance on MobileNetV2 features, not Inception-FID"}
