"""SHOT: source hypothesis transfer (Liang, Hu & Feng, ICML 2020), source-free.

The source classifier head h is frozen; only the feature extractor g (backbone + bottleneck) adapts
on unlabeled target images, so that target features fit the source hypothesis:

    L = L_ent - L_div + beta * L_pl
    L_ent = mean_i H(p_i),  L_div = H(mean_i p_i)           (information maximisation)
    L_pl  = mean_i CE(p_i, y^_i)                           (self-supervised pseudo labels)

Pseudo labels y^ come from class centroids in feature space, recomputed over the whole target
set at the start of every epoch (`centroid_pseudo_labels`). Paper settings: beta = 0.3, SGD lr 0.01
momentum 0.9 (Nesterov), weight decay 5e-4, lr_t = lr * (1 + 10 p)^-0.75, batch 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.losses import cross_entropy, entropy, information_maximization


def centroid_pseudo_labels(
    features: torch.Tensor,
    probs: torch.Tensor,
    rounds: int = 1,
    threshold: int = 0,
    bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SHOT's self-supervised labels: weighted k-means in feature space, seeded by the predictions.

    f~_i = [f_i, 1] / ||[f_i, 1]||   (bias column, then L2 normalisation; `bias=False` drops the 1)
    c_k  = sum_i p_ik f~_i / sum_i p_ik                        (soft centroids)
    y^_i = argmin_{k in K'} d(f~_i, c_k),  d(a, b) = 1 - a.b / (||a|| ||b||)   (cosine distance)
    then `rounds` times: c_k = mean of f~_i with y^_i = k, relabel the same way.
    K' are the classes predicted (argmax p) for more than `threshold` samples, as in the official code.
    Returns (labels (N,) int64, centroids (K, D+bias) of the last round).
    """
    if features.dim() != 2 or probs.dim() != 2 or features.shape[0] != probs.shape[0]:
        raise ValueError(f"features (N, D) and probs (N, K) expected, got {tuple(features.shape)} and {tuple(probs.shape)}")
    if features.shape[0] == 0:
        raise ValueError("no samples to label")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    f = features.double()
    if bias:
        f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)
    f = F.normalize(f, dim=1)
    p = probs.to(f)
    k = p.shape[1]
    counts = torch.bincount(p.argmax(1), minlength=k)
    labelset = torch.nonzero(counts > threshold).flatten()
    if labelset.numel() == 0:
        labelset = torch.arange(k, device=f.device)

    def assign(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = weights.t() @ f / (weights.sum(0)[:, None] + 1e-8)
        dist = 1.0 - f @ F.normalize(c[labelset], dim=1).t()
        return labelset[dist.argmin(1)], c

    labels, cents = assign(p)
    for _ in range(rounds):
        labels, cents = assign(F.one_hot(labels, k).to(f))
    return labels, cents.to(features.dtype)


def shot_loss(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor | None,
    beta: float = 0.3,
    im_weight: float = 1.0,
    diversity_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = im_weight * (mean_i H(p_i) - diversity_weight * H(mean_i p_i)) + beta * CE(z, y^).

    Returns (total, {"ent", "div", "pl_ce"}) with the parts detached for logging.
    """
    im = information_maximization(logits, diversity_weight=diversity_weight)
    total = im_weight * im
    parts: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        p = F.softmax(logits, dim=1)
        parts["ent"] = entropy(p).mean()
        parts["div"] = entropy(p.mean(0), dim=0)
    if pseudo_labels is not None and beta > 0:
        ce = cross_entropy(logits, pseudo_labels)
        total = total + beta * ce
        parts["pl_ce"] = ce.detach()
    return total, parts


def im_score(probs: torch.Tensor) -> float:
    """Label-free model score (higher is better): H(mean_i p_i) - mean_i H(p_i), the mutual information."""
    return float(entropy(probs.mean(0), dim=0) - entropy(probs).mean())


@dataclass
class Phase:
    """One optimisation step of a method: named losses summed and minimised over one parameter group.

    `logs` holds extra detached figures (not optimised) for the log.
    """

    losses: dict[str, torch.Tensor]
    params: str = "model"
    logs: dict[str, torch.Tensor] | None = None


class Shot:
    """SHOT as a Method: reads only the `target` stream; trains `model.feature_parameters()`.

    The model must offer `forward_features(x) -> (features, logits)`, `feature_parameters()` and
    `head_parameters()` (see shiftkit.models.ccexam). The head is frozen and kept in eval mode.
    """

    name = "shot"
    streams = ("target",)

    def __init__(
        self,
        beta: float = 0.3,
        im_weight: float = 1.0,
        diversity_weight: float = 1.0,
        refine_rounds: int = 1,
        label_threshold: int = 0,
    ):
        if beta < 0 or im_weight < 0 or diversity_weight < 0:
            raise ValueError(f"weights must be >= 0, got beta={beta} im_weight={im_weight} diversity_weight={diversity_weight}")
        if refine_rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0, got {refine_rounds}")
        self.beta, self.im_weight, self.diversity_weight = float(beta), float(im_weight), float(diversity_weight)
        self.refine_rounds, self.label_threshold = int(refine_rounds), int(label_threshold)
        self.pseudo_labels: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        return {
            "method": self.name, "beta": self.beta, "im_weight": self.im_weight,
            "diversity_weight": self.diversity_weight, "refine_rounds": self.refine_rounds,
            "label_threshold": self.label_threshold,
        }

    @staticmethod
    def _check_model(model: nn.Module) -> None:
        for attr in ("forward_features", "feature_parameters", "head_parameters"):
            if not hasattr(model, attr):
                raise TypeError(f"SHOT needs a model with {attr}() (feature extractor + head split), got {type(model).__name__}")

    def parameter_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Freeze the head; the single trainable group is the feature extractor."""
        self._check_model(model)
        for p in model.head_parameters():
            p.requires_grad_(False)
        return {"model": [p for p in model.feature_parameters() if p.requires_grad]}

    def train_mode(self, model: nn.Module) -> None:
        """Feature extractor in train mode (target batch-norm statistics), frozen head in eval mode."""
        model.train()
        head = getattr(model, "head", None)
        if isinstance(head, nn.Module):
            head.eval()

    def on_epoch_start(self, features: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
        """Relabel the whole target set from its (eval-mode) features and predictions."""
        self.pseudo_labels, _ = centroid_pseudo_labels(
            features, probs, rounds=self.refine_rounds, threshold=self.label_threshold
        )
        agree = float((self.pseudo_labels == probs.argmax(1).to(self.pseudo_labels.device)).float().mean())
        return {"pseudo_label_agreement": agree}

    def step(self, model: nn.Module, images: torch.Tensor, index: torch.Tensor) -> list[Phase]:
        """Losses for one target batch (`index` = positions in the target set, to find the pseudo labels)."""
        _, logits = model.forward_features(images)
        labels = None
        if self.beta > 0:
            if self.pseudo_labels is None:
                raise RuntimeError("SHOT.on_epoch_start must run before step (no pseudo labels yet)")
            labels = self.pseudo_labels.to(logits.device)[index.to(logits.device)]
        losses = {"im": self.im_weight * information_maximization(logits, diversity_weight=self.diversity_weight)}
        if labels is not None:
            losses["pl"] = self.beta * cross_entropy(logits, labels)
        with torch.no_grad():
            p = F.softmax(logits, dim=1)
            logs = {"ent": entropy(p).mean(), "div": entropy(p.mean(0), dim=0)}
        return [Phase(losses, "model", logs)]


__all__ = ["Phase", "Shot", "centroid_pseudo_labels", "im_score", "shot_loss"]
