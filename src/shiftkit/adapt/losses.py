"""Domain adaptation losses as plain functions of batched tensors.

Conventions: logits/probabilities carry classes on dim 1, so (N, C) classification outputs and
(N, C, H, W) segmentation outputs share the same functions wherever the maths is the same
(pixels are samples). Every function works on CPU and CUDA and is differentiable where it says so.
Each docstring gives the formula; tests/adapt/test_losses.py checks it against a hand computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-8


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not torch.is_tensor(logits):
        raise TypeError(f"{name} must be a tensor, got {type(logits).__name__}")
    if logits.dim() < 2:
        raise ValueError(f"{name} must have classes on dim 1: (N, C) or (N, C, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on dim 1, got {logits.shape[1]}")


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy with label smoothing (eps) and optional class weights w.

    q = (1 - eps) * onehot(y) + eps / C;  CE = -sum_c q_c log softmax(z)_c
    With weights each sample counts w_y and the mean divides by sum w_y (PyTorch semantics).
    """
    _check_logits(logits)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy per sample (or pixel), in nats: H(p) = -sum_c p_c log p_c.

    Takes probabilities (not logits); returns the input shape without `dim`.
    """
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(dim=dim)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(z)) per sample, computed stably with log_softmax."""
    _check_logits(logits)
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def mean_entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Entropy minimisation (MinEnt): L = mean_i H(softmax(z_i))."""
    return entropy_from_logits(logits).mean()


def information_maximization(logits: torch.Tensor, diversity_weight: float = 1.0) -> torch.Tensor:
    """Information maximisation loss (SHOT/IM): L = mean_i H(p_i) - w * H(mean_i p_i).

    Low when every prediction is confident and the classes are used evenly on average.
    Pixels of (N, C, H, W) inputs count as samples.
    """
    _check_logits(logits)
    probs = F.softmax(logits, dim=1)
    flat = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    return entropy(flat).mean() - diversity_weight * entropy(flat.mean(dim=0), dim=0)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky 2015): forward y = x, backward dL/dx = -coeff * dL/dy."""
    return _GradientReversal.apply(x, float(coeff))


class GradientReversal(torch.nn.Module):
    """Module form of `grad_reverse`; set `.coeff` each step (e.g. from `dann_lambda`)."""

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.coeff = coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.coeff)


def dann_lambda(progress: float, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """DANN's adaptation factor: lambda(p) = max * (2 / (1 + exp(-gamma * p)) - 1), p in [0, 1].

    Starts at 0 (the discriminator's noise does not disturb early training) and tends to max.
    """
    if not 0.0 <= progress <= 1.0 + 1e-9:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return float(max_value * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0))


def domain_bce(
    d_source: torch.Tensor,
    d_target: torch.Tensor,
    w_source: torch.Tensor | None = None,
    w_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Domain classification loss on discriminator logits (source = 1, target = 0).

    Unweighted: L = 1/2 [ mean_i BCE(d_s_i, 1) + mean_j BCE(d_t_j, 0) ],  BCE(d, y) = -y log s(d) - (1-y) log(1-s(d)).
    Weighted (CDAN+E): L = sum_k w_k BCE_k / sum_k w_k over the concatenated source and target batch.
    """
    d_source = d_source.reshape(d_source.shape[0], -1)
    d_target = d_target.reshape(d_target.shape[0], -1)
    ones, zeros = torch.ones_like(d_source), torch.zeros_like(d_target)
    if w_source is None and w_target is None:
        return 0.5 * (
            F.binary_cross_entropy_with_logits(d_source, ones) + F.binary_cross_entropy_with_logits(d_target, zeros)
        )
    if w_source is None or w_target is None:
        raise ValueError("give both w_source and w_target, or neither")
    d = torch.cat([d_source, d_target])
    y = torch.cat([ones, zeros])
    w = torch.cat([w_source.reshape(-1), w_target.reshape(-1)]).to(d.dtype)
    per = F.binary_cross_entropy_with_logits(d, y, reduction="none").mean(dim=1)
    return (w * per).sum() / w.sum().clamp_min(_EPS)


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """CDAN+E's entropy conditioning: w_i = 1 + exp(-H(p_i)), normalised to mean 1 over the batch.

    Confident (easy-to-transfer) samples weigh more. No gradient flows through the weights.
    """
    h = entropy(probs.detach())
    w = 1.0 + torch.exp(-h)
    return w * (w.numel() / w.sum())


def cdan_condition(
    features: torch.Tensor,
    probs: torch.Tensor,
    random_f: torch.Tensor | None = None,
    random_g: torch.Tensor | None = None,
) -> torch.Tensor:
    """CDAN's multilinear conditioning T(f, g) of features f (N, D) by predictions g (N, C).

    Full map: T = flatten(g outer f), (N, C*D), T[n, c*D + d] = g[n, c] * f[n, d].
    Randomized map for large C*D: T = (f @ R_f) * (g @ R_g) / sqrt(K), R_f (D, K), R_g (C, K) fixed
    Gaussian matrices, whose inner products approximate those of the full map.
    """
    if features.dim() != 2 or probs.dim() != 2 or features.shape[0] != probs.shape[0]:
        raise ValueError(f"features (N, D) and probs (N, C) expected, got {tuple(features.shape)} and {tuple(probs.shape)}")
    if (random_f is None) != (random_g is None):
        raise ValueError("give both random_f and random_g, or neither")
    if random_f is None:
        return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)
    k = random_f.shape[1]
    return (features @ random_f) * (probs @ random_g) / math.sqrt(k)


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum Class Confusion (Jin et al., ECCV 2020).

    p = softmax(z / T);  w_i = 1 + exp(-H(p_i)), rescaled to sum N (no gradient);
    M = p^T diag(w) p  (C x C);  M~ = M with each row divided by its sum;
    L = (sum_jk M~_jk - trace M~) / C  (the mean off-diagonal confusion per class).
    """
    _check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"mcc_loss takes (N, C) logits, got {tuple(logits.shape)}; flatten pixels first")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, c = logits.shape
    p = F.softmax(logits / temperature, dim=1)
    w = 1.0 + torch.exp(-entropy(p.detach()))
    w = (n * w / w.sum()).unsqueeze(1)
    m = (p * w).t() @ p
    m = m / m.sum(dim=1, keepdim=True).clamp_min(_EPS)
    return (m.sum() - torch.trace(m)) / c


def flexmatch_thresholds(
    selected: torch.Tensor, num_classes: int, tau: float = 0.95, warmup: bool = True, mapping: str = "convex"
) -> torch.Tensor:
    """Class-wise thresholds from curriculum pseudo labelling (FlexMatch, Zhang et al. 2021).

    `selected` (N_u,) holds, per unlabeled sample, the class last predicted with confidence > tau,
    or -1.  sigma_c = #{selected == c};  beta_c = sigma_c / max(max_c sigma_c, #{selected == -1})
    with warm-up (else / max_c sigma_c);  T_c = tau * M(beta_c), M(x) = x / (2 - x) (convex) or x (linear).
    Hard-to-learn classes get lower thresholds, so they still receive pseudo labels.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    if mapping not in ("convex", "linear"):
        raise ValueError(f"mapping must be 'convex' or 'linear', got {mapping!r}")
    sigma = torch.bincount(selected[selected >= 0].long(), minlength=num_classes)[:num_classes].float()
    denom = sigma.max()
    if warmup:
        denom = torch.maximum(denom, (selected < 0).sum().float())
    beta = sigma / denom.clamp_min(1.0)
    m = beta / (2.0 - beta) if mapping == "convex" else beta
    return tau * m


def pseudo_label_loss(
    logits_strong: torch.Tensor, probs_weak: torch.Tensor, thresholds: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch consistency: pseudo labels from the weak view supervise the strong view.

    y^_i = argmax p_w_i; mask_i = [max p_w_i >= T_{y^_i}];  L = (1/N) sum_i mask_i CE(z_s_i, y^_i).
    Returns (loss, mask, pseudo labels). `thresholds` is one float or a (C,) tensor (class-wise).
    """
    _check_logits(logits_strong, "logits_strong")
    probs_weak = probs_weak.detach()
    conf, labels = probs_weak.max(dim=1)
    if torch.is_tensor(thresholds):
        thr = thresholds.to(probs_weak.device, probs_weak.dtype)[labels]
    else:
        thr = torch.full_like(conf, float(thresholds))
    mask = (conf >= thr).to(logits_strong.dtype)
    ce = F.cross_entropy(logits_strong, labels, reduction="none")
    return (ce * mask).mean(), mask, labels
