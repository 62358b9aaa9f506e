"""Segmentation adaptation losses: plain functions of batched (N, C, H, W) tensors.

Pixels are samples: the shared maths (Shannon entropy) comes from `shiftkit.adapt.losses`.
Masks are int64 (N, H, W) with `ignore_index` (255) on pixels that carry no label.
Every function works on CPU and CUDA; tests/adapt/test_seg_losses.py checks each formula
against a hand computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shiftkit.adapt.losses import entropy

IGNORE_INDEX = 255
_EPS = 1e-30  # ADVENT's reference code adds 1e-30 inside log2


def _check_maps(x: torch.Tensor, name: str = "logits") -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on dim 1, got {x.shape[1]}")


def _check_mask(mask: torch.Tensor, logits: torch.Tensor) -> None:
    if not torch.is_tensor(mask) or mask.dim() != 3:
        raise ValueError(f"mask must be an (N, H, W) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    if mask.shape[0] != logits.shape[0] or mask.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(logits.shape)} (N, H, W)")


def seg_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      weight: torch.Tensor | None = None, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy over labelled pixels: L = -(1/|V|) sum_{p in V} log softmax(z_p)_{y_p},
    V = {p : y_p != ignore_index}. Logits of another size are bilinearly resized to the mask first
    (DeepLab practice). A batch with no labelled pixel gives 0 (not NaN), connected to the graph.
    With class weights w: L = sum_V w_{y_p} ce_p / sum_V w_{y_p} (torch's weighted mean). Pixel weights
    q (N, H, W) scale each pixel's term without entering the normaliser (DACS's confidence weight):
    L = sum_V q_p w_{y_p} ce_p / sum_V w_{y_p}, so q = 1 everywhere gives the unweighted loss.
    """
    _check_maps(logits)
    if mask.dim() == 3 and logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    _check_mask(mask, logits)
    mask = mask.long()
    valid = mask != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    bad = valid & ((mask < 0) | (mask >= logits.shape[1]))
    if bool(bad.any()):
        raise ValueError(f"mask holds ids {sorted(set(mask[bad].tolist()))[:5]} outside [0, {logits.shape[1]}) "
                         f"that are not the ignore index {ignore_index}")
    if pixel_weight is None:
        return F.cross_entropy(logits.float(), mask, weight=weight, ignore_index=ignore_index)
    if pixel_weight.shape != mask.shape:
        raise ValueError(f"pixel_weight {tuple(pixel_weight.shape)} must match the mask {tuple(mask.shape)}")
    ce = F.cross_entropy(logits.float(), mask, weight=weight, ignore_index=ignore_index, reduction="none")
    w_y = torch.ones_like(ce) if weight is None else weight.to(ce)[mask.clamp(0, logits.shape[1] - 1)]
    return (pixel_weight.to(ce) * ce).sum() / (w_y * valid).sum()


def self_information(probs: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information map (Vu et al. 2019, eq. 5), normalised to [0, 1]:
    I_c = -p_c log p_c / log C  (C channels, same shape as `probs`). Sum over c = normalised entropy.
    """
    _check_maps(probs, "probs")
    c = probs.shape[1]
    return -(probs * torch.log(probs + _EPS)) / math.log(c)


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """Normalised per-pixel entropy E = H(p) / log C in [0, 1], shape (N, H, W)."""
    _check_maps(probs, "probs")
    return entropy(probs, dim=1) / math.log(probs.shape[1])


def minent_loss(logits: torch.Tensor) -> torch.Tensor:
    """ADVENT's direct entropy minimisation (eq. 3): L_ent = mean_{n,h,w} sum_c -p log p / log C."""
    _check_maps(logits)
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean() / math.log(logits.shape[1])


def charbonnier_entropy_loss(logits: torch.Tensor, eta: float = 2.0, eps: float = 1e-8) -> torch.Tensor:
    """FDA's robust entropy (Yang & Soatto 2020, eq. 5 and their code): with E = H(p) / log C per pixel,
    L = mean_{n,h,w} (E^2 + eps)^eta. eta = 2 penalises high-entropy pixels less than plain entropy
    relative to their count (a Charbonnier penalty), eta = 0.5 is ~ mean |E|.
    """
    _check_maps(logits)
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    logp = F.log_softmax(logits.float(), dim=1)
    e = -(logp.exp() * logp).sum(dim=1) / math.log(logits.shape[1])
    return (e.pow(2) + eps).pow(eta).mean()


def gan_loss(d_logits: torch.Tensor, label: float, gan: str = "bce") -> torch.Tensor:
    """Discriminator objective against a constant label y (1 = source, 0 = target).

    bce: mean BCE(sigmoid(d), y) = mean[-y log s(d) - (1 - y) log(1 - s(d))]  (AdaptSegNet, ADVENT)
    ls:  mean (d - y)^2  (least-squares GAN, AdaptSegNet's LS variant)
    """
    if gan not in ("bce", "ls"):
        raise ValueError(f"gan must be 'bce' or 'ls', got {gan!r}")
    if not 0.0 <= float(label) <= 1.0:
        raise ValueError(f"label must be in [0, 1], got {label}")
    target = torch.full_like(d_logits, float(label))
    if gan == "bce":
        return F.binary_cross_entropy_with_logits(d_logits.float(), target.float())
    return F.mse_loss(d_logits.float(), target.float())


def class_ratio_prior_loss(probs: torch.Tensor, prior: torch.Tensor, mode: str = "hinge", mu: float = 0.5) -> torch.Tensor:
    """ADVENT's class-ratio prior (Sec. 3.3) on the batch's soft class distribution
    q_c = mean_{n,h,w} p_c, against the source class ratios pi (sums to 1):

    hinge (paper): L = sum_c max(0, mu * pi_c - q_c)   (only classes predicted too rarely pay)
    kl:            L = sum_c pi_c log(pi_c / q_c)       (KL(pi || q))
    """
    _check_maps(probs, "probs")
    if mode not in ("hinge", "kl"):
        raise ValueError(f"mode must be 'hinge' or 'kl', got {mode!r}")
    prior = torch.as_tensor(prior, dtype=probs.dtype, device=probs.device)
    if prior.shape != (probs.shape[1],):
        raise ValueError(f"prior must have one ratio per class ({probs.shape[1]}), got shape {tuple(prior.shape)}")
    if bool((prior < 0).any()) or not math.isclose(float(prior.sum()), 1.0, rel_tol=1e-3):
        raise ValueError("prior must be non-negative and sum to 1")
    q = probs.float().mean(dim=(0, 2, 3))
    if mode == "hinge":
        return torch.clamp(mu * prior.float() - q, min=0).sum()
    nz = prior > 0
    return (prior[nz].float() * (torch.log(prior[nz].float()) - torch.log(q[nz].clamp_min(1e-12)))).sum()


def class_ratios(mask: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Share of labelled pixels per class: pi_c = #{y = c} / #{y != ignore} (float64, sums to 1)."""
    m = mask.reshape(-1).long()
    m = m[(m != ignore_index) & (m >= 0) & (m < num_classes)]
    if m.numel() == 0:
        raise ValueError("no labelled pixel to count class ratios from")
    counts = torch.bincount(m, minlength=num_classes).double()
    return counts / counts.sum()


def classwise_thresholds(conf: torch.Tensor, labels: torch.Tensor, num_classes: int, quantile: float = 0.5,
                         cap: float = 0.9, prior: torch.Tensor | None = None) -> torch.Tensor:
    """FDA's pseudo-label thresholds (getSudoLabel_multi.py): per class c, over pixels predicted c,
    t_c = min(sorted(conf)[round(n_c * quantile)], cap); t_c = 0 for a class never predicted.
    So each class keeps at least its most confident (1 - quantile) share, and everything above `cap`.

    With a class `prior` pi (shares summing to 1, e.g. the source masks' pixel shares), class c keeps
    at most floor(pi_c N) of the N pixels: where the rule above keeps more, t_c rises to the confidence
    of c's floor(pi_c N)-th most confident pixel. A model that labels target texture as foreground
    predicts a foreground class far above its prior; the FDA rule keeps a fixed share of whatever
    is predicted and so locks that over-prediction into the pseudo labels, the prior caps it.
    """
    if conf.shape != labels.shape:
        raise ValueError(f"conf {tuple(conf.shape)} and labels {tuple(labels.shape)} differ")
    if not 0.0 <= quantile <= 1.0 or not 0.0 < cap <= 1.0:
        raise ValueError(f"need 0 <= quantile <= 1 and 0 < cap <= 1, got {quantile}, {cap}")
    if prior is not None:
        prior = torch.as_tensor(prior, dtype=torch.float64).flatten()
        if prior.numel() != num_classes or bool((prior < 0).any()) or not float(prior.sum()) > 0:
            raise ValueError(f"prior must be {num_classes} non-negative class shares, got {prior.tolist()}")
        prior = prior / prior.sum()
    conf = conf.reshape(-1).float()
    labels = labels.reshape(-1).long()
    out = torch.zeros(num_classes, dtype=torch.float32, device=conf.device)
    for c in range(num_classes):
        x = conf[labels == c]
        if x.numel() == 0:
            continue
        x, _ = torch.sort(x)
        k = min(int(round(x.numel() * quantile)), x.numel() - 1)
        out[c] = min(float(x[k]), cap)
        if prior is not None:
            allowed = int(float(prior[c]) * conf.numel())
            if int((x >= out[c]).sum()) > allowed:  # more than its prior share: keep its `allowed` most confident
                out[c] = float(x[-allowed]) if allowed > 0 else math.inf
    return out


def pseudo_labels(probs: torch.Tensor, thresholds: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hard labels y = argmax p, set to `ignore_index` where max p < t_y: (N, H, W) int64."""
    _check_maps(probs, "probs")
    conf, lab = probs.max(dim=1)
    thr = thresholds.to(probs.device, probs.dtype)[lab]
    lab = lab.clone()
    lab[conf < thr] = ignore_index
    return lab
