"""Which target image styles which source image: explicit, seeded, and independent of run history.

`random`: target = H(seed, source path) mod n, a hash, so the choice for one image never depends
on which images were done before (kill + rerun gives the same pairs) nor on the rank that does it.
`nearest`: the target whose cheap style features (luminance mean/std, a 16-bin brightness
histogram, per-channel RGB mean/std) are closest in standardised L2; with `k > 1` one of the k
nearest is picked by the same hash, to avoid styling everything with one target.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from shiftkit.transfer import functional as TF

PAIR_MODES = ("random", "nearest")
N_BINS = 16


def stable_hash(seed: int, key: str) -> int:
    """A 64-bit integer from (seed, key) that is the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(f"{int(seed)}\0{key}".encode(), digest_size=8).digest(), "little")


def subset_indices(n: int, max_items: int | None, seed: int, salt: str = "targets") -> list[int]:
    """All of range(n), or a seeded subset of `max_items` of them in index order (hash-ranked)."""
    if max_items is None or max_items <= 0 or max_items >= n:
        return list(range(n))
    ranked = sorted(range(n), key=lambda i: stable_hash(seed, f"{salt}:{i}"))
    return sorted(ranked[:max_items])


def style_features(x: torch.Tensor) -> torch.Tensor:
    """Cheap style descriptor per image, (B, C, H, W) -> (B, 24) float64:
    [Y mean, Y std, 16-bin Y histogram, R/G/B means, R/G/B stds] with Y the luminance."""
    TF.check_images(x)
    y = TF.match_channels(x, 1).flatten(1).to(torch.float64)
    rgb = TF.match_channels(x, 3).flatten(2).to(torch.float64)
    b = x.shape[0]
    bins = (y.clamp(0, 1) * N_BINS).long().clamp_(max=N_BINS - 1)
    offs = torch.arange(b, device=x.device).view(-1, 1) * N_BINS
    hist = torch.bincount((bins + offs).view(-1), minlength=b * N_BINS).view(b, N_BINS).to(torch.float64) / y.shape[1]
    return torch.cat([y.mean(1, keepdim=True), y.std(1, unbiased=False, keepdim=True), hist, rgb.mean(2), rgb.std(2, unbiased=False)], dim=1).cpu()


def pair_random(keys: list[str], n_targets: int, seed: int) -> list[int]:
    """Target index per source key: stable_hash(seed, key) mod n_targets."""
    if n_targets <= 0:
        raise ValueError("the target set is empty: nothing to pair with")
    return [stable_hash(seed, k) % n_targets for k in keys]


def pair_nearest(
    src_feats: torch.Tensor,
    tgt_feats: torch.Tensor,
    keys: list[str] | None = None,
    seed: int = 0,
    k: int = 1,
    scale: torch.Tensor | None = None,
) -> list[int]:
    """Index of the stylistically nearest target per source row (standardised L2 on `style_features`).

    `scale` (F,) divides each feature (default: the targets' per-feature std, floored); ties go to
    the lowest index. With k > 1, one of the k nearest is chosen by stable_hash(seed, key).
    """
    if tgt_feats.ndim != 2 or tgt_feats.shape[0] == 0:
        raise ValueError("the target set is empty: nothing to pair with")
    if src_feats.ndim != 2 or src_feats.shape[1] != tgt_feats.shape[1]:
        raise ValueError(f"feature sizes differ: source {tuple(src_feats.shape)} vs target {tuple(tgt_feats.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scale is None:
        scale = feature_scale(tgt_feats)
    s = src_feats.to(torch.float64) / scale
    t = tgt_feats.to(torch.float64) / scale
    d = torch.cdist(s, t)
    k = min(k, t.shape[0])
    if k == 1:
        return [int(i) for i in _argmin_first(d)]
    if keys is None or len(keys) != s.shape[0]:
        raise ValueError("k > 1 needs one key per source row to pick among the nearest reproducibly")
    order = np.argsort(d.numpy(), axis=1, kind="stable")[:, :k]
    return [int(order[i, stable_hash(seed, keys[i]) % k]) for i in range(len(keys))]


def feature_scale(tgt_feats: torch.Tensor) -> torch.Tensor:
    """Per-feature spread used to standardise distances (target std, floored so constant features do not explode)."""
    return tgt_feats.to(torch.float64).std(0, unbiased=False).clamp_min(1e-3)


def _argmin_first(d: torch.Tensor) -> np.ndarray:
    # numpy's argmin is documented to return the first occurrence; torch's is not on every device
    return np.argmin(d.numpy(), axis=1)
