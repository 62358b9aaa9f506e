"""DAS3: source-free adaptation of a trained segmentation model (a DAS3 / ATP-style recipe).

Only the trained model and unlabeled target images are used (Wang, Liang & Zhang, "Give me your
trained model: domain adaptive semantic segmentation without source data", arXiv 2106.11653).
Three stages, each a target-only `Method` run by the one engine and each its own run folder
(`OUT/stage1`, `OUT/stage2`, `OUT/stage3`); a stage starts from the best (label-free) checkpoint of
the stage before it. Notation: p_p = softmax(z_p) over C classes at pixel p, m_p = max_c p_pc,
e_p = H(p_p) / log C (normalised entropy, in [0, 1]), P the pixels of a batch.

1. Implicit feature alignment (`Das3Align`), classifier frozen (`model.classifier`, and
   `model.aux_classifier` when there is one), the rest of the network adapts. First (bn_adapt=True,
   the default) every BatchNorm's running statistics are re-estimated on the target set (AdaBN,
   Li et al. 2016; `bn_adapt_target`): over the B target batches h^(b) of a BN layer's input,
       mu = (1/B) sum_b mean_{n,h,w} h^(b),   var = (1/B) sum_b var_{n,h,w}(h^(b))  (unbiased, per channel),
   so the start model -- and the prior pi0 below -- see target, not source, feature statistics. Then
       L_1 = lambda_ent * L_fent + lambda_div * L_wdiv
   focal entropic loss   L_fent = (1/|P|) sum_p w_p (1 - m_p)^gamma e_p,
                         w_p = alpha if e_p < certain (a certain pixel) else 1 - alpha;
   weighted diversity    L_wdiv = sum_c qbar_c log(qbar_c / pi_c) = -H(qbar) + sum_c qbar_c (-log pi_c),
                         qbar_c = (1/|P|) sum_p p_pc, pi = (1 - s) pi0 + s / C (s = 0.01),
   pi0 the mean prediction of the (BN-adapted) starting model over the whole target set (or a
   given prior): its argmax class shares (prior_from="hard", the default) or its mean probabilities
   ("soft"). An uncertain start model's soft mean overstates the rare classes, and a large s adds
   s (C-1)/C to them: on B5 (11 classes, ~6% digit pixels) s = 0.1 alone put 9% of the prior on
   digits, and stage 1 then grew the predicted digit share to match (see B5's source-free rows).
   With pi uniform L_wdiv = log C - H(qbar), the classic diversity term; the weights -log pi_c
   keep the predicted class distribution where it started instead of collapsing onto easy classes.
   Options: train="bn" adapts only the BatchNorm scales and shifts (TENT, Wang et al. 2021) instead of
   the whole body; jitter > 0 computes the losses on recoloured images (see below; default 0).
2. Bidirectional self-training (`Das3SelfTrain`), labels from the frozen stage-1 model (teacher):
       L_2 = lambda_pos * CE(z, yhat) + lambda_neg * L_neg
   positive labels       yhat_p = c = argmax p_p if m_p >= t_{n,c}, else ignored, with the
                         category-level threshold t_{n,c} = min(K-th largest m over the pixels of
                         image n predicted c, cap), K = ceil(top_k * #those pixels);
   negative labels       N_pc = [p_pc < tau] (tau = 0.05: classes the pixel surely is not);
   complementary CE      L_neg = -sum_{p,c} N_pc log(1 - p_pc) / sum_{p,c} N_pc.
   The student reads a recoloured copy x' = `random_photometric`(x, jitter) (jitter 0.3 by default): per
   image, brightness b ~ U(-s, s), contrast c ~ U(1 - s, 1 + s) about the image mean, a random channel
   order, grey with probability s / 2 (s = jitter); the teacher labels x itself. Pixels never move, so
   the labels stay valid, and the student must find the digits whatever the background's colours:
   target-test's photos are others than target-train's (B5 chose 0.3 on photo-disjoint validation).
3. Information propagation (`Das3Propagate`), a copy of the stage-2 model (frozen teacher) labels:
   images ranked by mean entropy ebar_n = (1/|P_n|) sum_p e_p; the `easy_share` (30%) lowest are
   confident ("easy"), the rest hard. Easy images train on the teacher's argmax labels; each hard
   image is mixed by ClassMix with another image of the batch (a hard one by default):
       M = [yhat_a in S],  S = ceil(n_a / 2) classes drawn from the n_a classes of yhat_a,
       x = M x_a + (1 - M) x_b,   y = M yhat_a + (1 - M) yhat_b,
   hard images' labels being the stage-2 positive labels, and
       L_3 = lambda_easy * CE(z_easy, yhat_easy) + lambda_mix * CE(z_mix, y_mix),
   z computed, as in stage 2, on the recoloured (easy and mixed) images, labels from the originals.

The loss functions are plain functions of tensors (tests/adapt/test_das3.py checks each against a
hand computation). `Das3.run` chains the stages: a stage whose folder holds metrics.json is done
and reused on a rerun (with resume), an interrupted one resumes from its last checkpoint, and
`stages` leaves stages out (ablations). Target-test labels, when given, only score.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.base import Method, Phase, StepInfo
from shiftkit.adapt.dacs import class_mix, mix_classes
from shiftkit.adapt.seg_base import _check_weight, levels, seg_model
from shiftkit.adapt.seg_losses import IGNORE_INDEX, seg_cross_entropy
from shiftkit.augment.functional import random_photometric
from shiftkit.device import forward_chunked
from shiftkit.errors import ShiftkitError

STAGES = (1, 2, 3)
STAGE_NAMES = {1: "das3-align", 2: "das3-self-train", 3: "das3-propagate"}

# Adaptation of an already trained segmenter: small Adam steps, one lr for body and heads.
DAS3_DEFAULTS: dict[str, Any] = {
    "task": "segmentation", "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "schedule": "cosine",
    "warmup_steps": 0, "head_lr_mult": 1.0, "batch_size": 8,
}


# ------------------------------------------------------------------------------------------------
# losses and label selection (pure functions)
# ------------------------------------------------------------------------------------------------


def _check_logits(z: torch.Tensor, name: str = "logits") -> None:
    if not torch.is_tensor(z) or z.dim() != 4:
        raise ValueError(f"{name} must be an (N, C, H, W) tensor, got {getattr(z, 'shape', type(z).__name__)}")
    if z.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on dim 1, got {z.shape[1]}")


def _norm_entropy(p: torch.Tensor) -> torch.Tensor:
    """e = -sum_c p_c log p_c / log C over dim 1: (N, H, W)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(1) / math.log(p.shape[1])


def focal_entropy_loss(logits: torch.Tensor, alpha: float = 0.5, gamma: float = 2.0, certain: float = 0.5) -> torch.Tensor:
    """Focal entropic loss: L = (1/|P|) sum_p w_p (1 - m_p)^gamma e_p, m_p = max_c p_pc,
    e_p = H(p_p) / log C, w_p = alpha where e_p < certain (certain pixels), 1 - alpha elsewhere.

    gamma = 0 and alpha = 0.5 give half the mean normalised entropy (ADVENT's MinEnt / 2).
    """
    _check_logits(logits)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not 0.0 < certain <= 1.0:
        raise ValueError(f"certain must be in (0, 1], got {certain}")
    p = F.softmax(logits.float(), dim=1)
    e = _norm_entropy(p)
    m = p.max(1).values
    w = torch.where(e.detach() < certain, torch.full_like(e, alpha), torch.full_like(e, 1.0 - alpha))
    return (w * (1.0 - m).clamp_min(0).pow(gamma) * e).mean()


def weighted_diversity_loss(logits: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """L = sum_c qbar_c log(qbar_c / pi_c), qbar_c = mean_{n,h,w} p_c (KL(qbar || pi));
    pi uniform when `prior` is None, then L = log C - H(qbar)."""
    _check_logits(logits)
    c = logits.shape[1]
    q = F.softmax(logits.float(), dim=1).mean(dim=(0, 2, 3))
    if prior is None:
        pi = torch.full_like(q, 1.0 / c)
    else:
        pi = torch.as_tensor(prior, dtype=torch.float32, device=q.device).flatten()
        if pi.numel() != c:
            raise ValueError(f"prior must have one value per class ({c}), got {pi.numel()}")
        if bool((pi <= 0).any()) or not math.isclose(float(pi.sum()), 1.0, rel_tol=1e-3):
            raise ValueError("prior must be positive and sum to 1")
    return (q * (torch.log(q.clamp_min(1e-12)) - torch.log(pi))).sum()


def smoothed_prior(mean_probs: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """pi = (1 - s) pi0 + s / C from a class distribution pi0 (renormalised; float32, sums to 1)."""
    pi0 = torch.as_tensor(mean_probs, dtype=torch.float64).flatten().clamp_min(0)
    if pi0.numel() < 2 or float(pi0.sum()) <= 0:
        raise ValueError(f"need a class distribution over >= 2 classes, got {mean_probs!r}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    pi0 = pi0 / pi0.sum()
    pi = (1 - smoothing) * pi0 + smoothing / pi0.numel()
    return (pi / pi.sum()).float()


def category_thresholds(probs: torch.Tensor, top_k: float = 0.5, cap: float = 0.9) -> torch.Tensor:
    """Category-level thresholds per image: t_{n,c} = min(K-th largest confidence among the pixels of
    image n predicted c, cap), K = ceil(top_k * n_{n,c}); t = cap for a class image n never predicts.
    Returns (N, C) float32."""
    _check_logits(probs, "probs")
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be in (0, 1], got {top_k}")
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"cap must be in (0, 1], got {cap}")
    conf, lab = probs.detach().float().max(1)
    n, c = probs.shape[:2]
    out = torch.full((n, c), float(cap), dtype=torch.float32, device=probs.device)
    for i in range(n):
        ci, li = conf[i].reshape(-1), lab[i].reshape(-1)
        for k in range(c):
            x = ci[li == k]
            if x.numel() == 0:
                continue
            kk = max(1, math.ceil(top_k * x.numel() - 1e-9))
            out[i, k] = min(float(torch.topk(x, kk).values[-1]), float(cap))
    return out


def positive_pseudo_labels(probs: torch.Tensor, top_k: float = 0.5, cap: float = 0.9,
                           ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """yhat = argmax p where max p >= t_{n, argmax p} (`category_thresholds`), else ignore_index: (N, H, W) int64."""
    thr = category_thresholds(probs, top_k, cap)
    conf, lab = probs.detach().float().max(1)
    t = torch.gather(thr, 1, lab.flatten(1)).view_as(conf)
    lab = lab.clone()
    lab[conf < t] = ignore_index
    return lab


def negative_pseudo_labels(probs: torch.Tensor, tau: float = 0.05) -> torch.Tensor:
    """N_pc = [p_pc < tau]: the classes each pixel is confidently not, (N, C, H, W) bool."""
    _check_logits(probs, "probs")
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    return probs < tau


def complementary_cross_entropy(logits: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Multi-label complementary CE: L = -sum_{p,c} N_pc log(1 - p_pc) / sum_{p,c} N_pc (0 without negatives)."""
    _check_logits(logits)
    if negatives.shape != logits.shape:
        raise ValueError(f"negatives {tuple(negatives.shape)} must match logits {tuple(logits.shape)}")
    neg = negatives.to(torch.bool)
    count = int(neg.sum())
    if count == 0:
        return logits.sum() * 0.0
    p = F.softmax(logits.float(), dim=1)
    return -(torch.log1p(-p.clamp(max=1.0 - 1e-6)) * neg).sum() / count


def image_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean normalised entropy per image: ebar_n = mean_{h,w} H(p) / log C, (N,)."""
    _check_logits(probs, "probs")
    return _norm_entropy(probs.float()).mean(dim=(1, 2))


def split_easy_hard(scores: torch.Tensor, easy_share: float = 0.3) -> torch.Tensor:
    """Easy (True) for the round(easy_share * N) lowest scores (at least 1; at least 1 hard when N >= 2);
    ties go to the earlier image. Returns (N,) bool."""
    s = torch.as_tensor(scores).flatten()
    if s.numel() == 0:
        raise ValueError("no image to rank")
    if not 0.0 < easy_share < 1.0:
        raise ValueError(f"easy_share must be in (0, 1), got {easy_share}")
    n = s.numel()
    k = min(max(1, round(easy_share * n)), max(1, n - 1))
    order = torch.sort(s.double(), stable=True).indices
    easy = torch.zeros(n, dtype=torch.bool)
    easy[order[:k]] = True
    return easy


# ------------------------------------------------------------------------------------------------
# the three stages as Methods of the engine (target stream only)
# ------------------------------------------------------------------------------------------------


def _heads(model: nn.Module) -> list[nn.Module]:
    m = seg_model(model)
    heads = [h for h in (getattr(m, "classifier", None), getattr(m, "aux_classifier", None)) if isinstance(h, nn.Module)]
    if not heads:
        raise ShiftkitError(f"{type(m).__name__} has no `classifier` module to freeze", None,
                            "use a shiftkit segmentation model (unet, deeplabv2)")
    return heads


def _frozen_copy(model: nn.Module) -> nn.Module:
    t = copy.deepcopy(seg_model(model))
    for p in t.parameters():
        p.requires_grad_(False)
    return t.eval()


@torch.no_grad()
def _whole_target(engine: Any, model: nn.Module, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over every decodable target image, eval mode: (sum of p over pixels (C,) -- with hard=True the
    one-hot argmax counts instead --, pixel count, mean entropy per image (N,) with NaN for undecodable images)."""
    from shiftkit.train.seg_data import seg_batches

    ds = engine.streams["target"]
    bs = int(getattr(getattr(engine, "cfg", None), "eval_batch_size", 64) or 64)
    was = model.training
    model.eval()
    psum, npx = None, 0
    scores = torch.full((len(ds),), float("nan"), dtype=torch.float64)
    try:
        for b in seg_batches(ds, bs, 0):
            if b["x"] is None:
                continue
            x = b["x"].to(getattr(engine, "device", "cpu"))
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            p = F.softmax(forward_chunked(lambda v: levels(model, v, False)[0], x).float(), dim=1)
            if hard:
                s = torch.bincount(p.argmax(1).flatten().cpu(), minlength=p.shape[1]).double()
            else:
                s = p.sum(dim=(0, 2, 3)).double().cpu()
            psum = s if psum is None else psum + s
            npx += p.shape[0] * p.shape[2] * p.shape[3]
            scores[b["index"]] = image_entropy(p).double().cpu()
    finally:
        model.train(was)
    if psum is None:
        raise ShiftkitError("no decodable target image", None, "run `shiftkit validate` on --target")
    return psum, torch.tensor(npx), scores


@torch.no_grad()
def bn_adapt_target(engine: Any, model: nn.Module) -> int:
    """AdaBN on the whole target stream (eval-mode forward, BatchNorm layers in train mode with
    momentum None: mu, var = the per-channel means of the batch means / unbiased batch variances);
    weights unchanged, the model's train/eval mode restored. Returns the number of BatchNorm layers
    re-estimated (0 for a model without BatchNorm: nothing to do)."""
    from shiftkit.adapt.augmented import adabn
    from shiftkit.train.seg_data import seg_batches

    net = getattr(model, "model", model)  # the engine's wrapper or the model
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if n_bn == 0:
        return 0
    bs = int(getattr(getattr(engine, "cfg", None), "eval_batch_size", 64) or 64)
    dev = getattr(engine, "device", "cpu")

    def batches():
        for b in seg_batches(engine.streams["target"], bs, 0):
            if b["x"] is None:
                continue
            x = b["x"].to(dev)
            yield x.float().div_(255.0) if x.dtype == torch.uint8 else x

    was = net.training
    try:
        adabn(net, batches())
    except ValueError as exc:  # no decodable batch
        raise ShiftkitError(f"das3 bn_adapt: {exc}", None, "run `shiftkit validate` on --target") from None
    finally:
        net.train(was)
    return n_bn


def bn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The BatchNorm layers' affine scales and shifts (gamma, beta) outside the classifier head(s):
    what TENT (Wang et al. 2021) adapts, every other weight staying as trained."""
    heads = {id(p) for h in _heads(model) for p in h.parameters()}
    net = getattr(model, "model", model)
    return [p for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in (m.weight, m.bias) if p is not None and id(p) not in heads]


def _check_jitter(jitter: Any) -> float:
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= float(jitter) <= 1.0:
        raise ShiftkitError(f"jitter must be a number in [0, 1], got {jitter!r}", None,
                            "the student's colour-change strength (random_photometric), e.g. 0.3; 0 turns it off")
    return float(jitter)


def _log(engine: Any, record: dict[str, Any]) -> None:
    run = getattr(engine, "run", None)
    if run is not None and hasattr(run, "log"):
        run.log(record)


class _Das3Stage(Method):
    streams = ("target",)
    uses_target_labels = False
    task = "segmentation"
    stage = 0

    def __init__(self, ignore_index: int = IGNORE_INDEX, jitter: float = 0.0):
        self.ignore_index = int(ignore_index)
        self.jitter = _check_jitter(jitter)  # colour-change strength of the images the student reads
        self.teacher: nn.Module | None = None

    def _logits(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return levels(net, x, False)[0]

    @torch.no_grad()
    def _teacher_probs(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            raise RuntimeError(f"{self.name}: setup(engine) must run before the first step")
        self.teacher.eval()
        return F.softmax(self.teacher(x).float(), dim=1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "streams": list(self.streams), "jitter": self.jitter}


class Das3Align(_Das3Stage):
    """Stage 1: focal entropic + weighted diversity losses, classifier(s) frozen."""

    name = STAGE_NAMES[1]
    stage = 1
    TRAIN = ("body", "bn")

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0, certain: float = 0.5, lambda_ent: float = 1.0,
                 lambda_div: float = 1.0, prior: Any = None, prior_smoothing: float = 0.01, prior_from: str = "hard",
                 bn_adapt: bool = True, train: str = "body", jitter: float = 0.0, ignore_index: int = IGNORE_INDEX):
        super().__init__(ignore_index, jitter)
        if train not in self.TRAIN:
            raise ShiftkitError(f"train must be one of {', '.join(self.TRAIN)}, got {train!r}", None,
                                "body: every parameter but the classifier's; bn: only BatchNorm scales and shifts (TENT)")
        self.train = train
        if not isinstance(bn_adapt, bool):
            raise ShiftkitError(f"bn_adapt must be true or false, got {bn_adapt!r}", None,
                                "true: re-estimate BatchNorm statistics on the target before stage 1 (AdaBN)")
        self.bn_adapt = bn_adapt
        if prior_from not in ("soft", "hard"):
            raise ShiftkitError(f"prior_from must be soft or hard, got {prior_from!r}", None,
                                "soft: mean probabilities of the starting model; hard: its argmax class shares")
        self.prior_from = prior_from
        if not 0.0 <= float(alpha) <= 1.0:
            raise ShiftkitError(f"alpha must be in [0, 1], got {alpha}", None, "e.g. alpha 0.5 (equal weights)")
        if not float(gamma) >= 0:
            raise ShiftkitError(f"gamma must be >= 0, got {gamma}", None, "e.g. gamma 2")
        if not 0.0 < float(certain) <= 1.0:
            raise ShiftkitError(f"certain must be in (0, 1], got {certain}", None, "a normalised-entropy cut, e.g. 0.5")
        if not 0.0 <= float(prior_smoothing) <= 1.0:
            raise ShiftkitError(f"prior_smoothing must be in [0, 1], got {prior_smoothing}", None, "e.g. 0.01")
        self.alpha, self.gamma, self.certain = float(alpha), float(gamma), float(certain)
        self.lambda_ent, self.lambda_div = _check_weight("lambda_ent", lambda_ent), _check_weight("lambda_div", lambda_div)
        self.prior_smoothing = float(prior_smoothing)
        self.given_prior = None if prior is None else [float(v) for v in prior]
        self.prior: torch.Tensor | None = None
        self.frozen: list[nn.Parameter] = []

    def freeze(self, model: nn.Module) -> list[nn.Parameter]:
        self.frozen = [p for h in _heads(model) for p in h.parameters() if p.requires_grad]
        if self.train == "bn":
            keep = {id(p) for p in bn_affine_parameters(model)}
            seen = {id(p) for p in self.frozen}
            self.frozen += [p for p in getattr(model, "model", model).parameters()
                            if p.requires_grad and id(p) not in keep and id(p) not in seen]
        for p in self.frozen:
            p.requires_grad_(False)
        return self.frozen

    def unfreeze(self) -> None:
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []

    def setup(self, engine: Any) -> None:
        self.freeze(engine.model)
        if getattr(engine, "resuming", False):  # the checkpoint brings the adapted statistics and the prior
            return
        if self.bn_adapt:
            n_bn = bn_adapt_target(engine, engine.model)
            _log(engine, {"event": "das3_bn_adapt", "batchnorm_layers": n_bn})
        c = int(getattr(engine, "num_classes", 0) or seg_model(engine.model).num_classes)
        if self.given_prior is not None:
            if len(self.given_prior) != c:
                raise ShiftkitError(f"prior has {len(self.given_prior)} values for {c} classes", None, "give one ratio per class")
            self.prior = smoothed_prior(torch.tensor(self.given_prior), self.prior_smoothing)
        elif self.lambda_div > 0 and self.prior is None:
            psum, npx, _ = _whole_target(engine, engine.model, hard=self.prior_from == "hard")
            self.prior = smoothed_prior(psum / max(1, int(npx)), self.prior_smoothing)
            _log(engine, {"event": "das3_prior", "prior": [round(float(v), 5) for v in self.prior]})

    def losses(self, logits: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        out = {"fent": self.lambda_ent * focal_entropy_loss(logits, self.alpha, self.gamma, self.certain)}
        if self.lambda_div > 0:
            prior = None if self.prior is None else self.prior.to(logits.device)
            out["wdiv"] = self.lambda_div * weighted_diversity_loss(logits, prior)
        with torch.no_grad():
            p = F.softmax(logits.float(), 1)
            logs = {"ent": float(_norm_entropy(p).mean()), "certain_share": float((_norm_entropy(p) < self.certain).float().mean())}
        return out, logs

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        for h in _heads(net):
            h.eval()
        losses, logs = self.losses(self._logits(net, random_photometric(batch["target"]["x"], self.jitter)))
        return [Phase(losses, ("model",), logs)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.prior is None else {"prior": self.prior}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "prior" in state:
            self.prior = state["prior"].float().cpu()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "gamma": self.gamma, "certain": self.certain,
                "lambda_ent": self.lambda_ent, "lambda_div": self.lambda_div, "prior": self.given_prior,
                "prior_smoothing": self.prior_smoothing, "prior_from": self.prior_from, "bn_adapt": self.bn_adapt,
                "train": self.train}


class Das3SelfTrain(_Das3Stage):
    """Stage 2: positive (category-level threshold) + negative (p < tau) pseudo labels from the frozen
    stage-1 model; CE on the positives, complementary CE on the negatives."""

    name = STAGE_NAMES[2]
    stage = 2

    def __init__(self, top_k: float = 0.5, cap: float = 0.9, tau: float = 0.05, lambda_pos: float = 1.0,
                 lambda_neg: float = 1.0, jitter: float = 0.3, ignore_index: int = IGNORE_INDEX):
        super().__init__(ignore_index, jitter)
        if not 0.0 < float(top_k) <= 1.0:
            raise ShiftkitError(f"top_k must be in (0, 1], got {top_k}", None, "the share of each class's pixels kept, e.g. 0.5")
        if not 0.0 < float(cap) <= 1.0:
            raise ShiftkitError(f"cap must be in (0, 1], got {cap}", None, "e.g. 0.9 (1 turns the cap off)")
        if not 0.0 < float(tau) < 1.0:
            raise ShiftkitError(f"tau must be in (0, 1), got {tau}", None, "e.g. 0.05")
        self.top_k, self.cap, self.tau = float(top_k), float(cap), float(tau)
        self.lambda_pos, self.lambda_neg = _check_weight("lambda_pos", lambda_pos), _check_weight("lambda_neg", lambda_neg)
        if self.lambda_pos == 0 and self.lambda_neg == 0:
            raise ShiftkitError("lambda_pos and lambda_neg are both 0: stage 2 would learn nothing", None, "keep one > 0")

    def setup(self, engine: Any) -> None:
        self.teacher = _frozen_copy(engine.model)

    def losses(self, logits: torch.Tensor, probs: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """probs: the teacher's softmax for the same images."""
        out: dict[str, torch.Tensor] = {}
        logs: dict[str, float] = {}
        if self.lambda_pos > 0:
            y = positive_pseudo_labels(probs, self.top_k, self.cap, self.ignore_index)
            out["pos"] = self.lambda_pos * seg_cross_entropy(logits, y, self.ignore_index)
            logs["pos_kept"] = float((y != self.ignore_index).float().mean())
        if self.lambda_neg > 0:
            neg = negative_pseudo_labels(probs, self.tau)
            out["neg"] = self.lambda_neg * complementary_cross_entropy(logits, neg)
            logs["neg_per_pixel"] = float(neg.float().sum(1).mean())
        return out, logs

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        x = batch["target"]["x"]
        probs = self._teacher_probs(x)  # the teacher sees the image as it is, the student a recoloured copy
        losses, logs = self.losses(self._logits(net, random_photometric(x, self.jitter)), probs)
        return [Phase(losses, ("model",), logs)]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "top_k": self.top_k, "cap": self.cap, "tau": self.tau, "lambda_pos": self.lambda_pos,
                "lambda_neg": self.lambda_neg}


class Das3Propagate(_Das3Stage):
    """Stage 3: easy images (lowest mean entropy) on the teacher's labels, hard images mixed by ClassMix."""

    name = STAGE_NAMES[3]
    stage = 3
    MIX_FROM = ("hard", "easy", "any")

    def __init__(self, easy_share: float = 0.3, top_k: float = 0.5, cap: float = 0.9, lambda_easy: float = 1.0,
                 lambda_mix: float = 1.0, mix_from: str = "hard", jitter: float = 0.3, ignore_index: int = IGNORE_INDEX):
        super().__init__(ignore_index, jitter)
        if not 0.0 < float(easy_share) < 1.0:
            raise ShiftkitError(f"easy_share must be in (0, 1), got {easy_share}", None, "e.g. 0.3 (the easiest 30%)")
        if not 0.0 < float(top_k) <= 1.0 or not 0.0 < float(cap) <= 1.0:
            raise ShiftkitError(f"top_k and cap must be in (0, 1], got {top_k}, {cap}", None, "e.g. top_k 0.5, cap 0.9")
        if mix_from not in self.MIX_FROM:
            raise ShiftkitError(f"mix_from must be one of {', '.join(self.MIX_FROM)}, got {mix_from!r}", None,
                                "use hard (paste hard images onto hard images)")
        self.easy_share, self.top_k, self.cap, self.mix_from = float(easy_share), float(top_k), float(cap), mix_from
        self.lambda_easy, self.lambda_mix = _check_weight("lambda_easy", lambda_easy), _check_weight("lambda_mix", lambda_mix)
        if self.lambda_easy == 0 and self.lambda_mix == 0:
            raise ShiftkitError("lambda_easy and lambda_mix are both 0: stage 3 would learn nothing", None, "keep one > 0")
        self.easy: torch.Tensor | None = None  # (N_target,) bool
        self.scores: torch.Tensor | None = None

    def setup(self, engine: Any) -> None:
        self.teacher = _frozen_copy(engine.model)
        if self.easy is None:
            _, _, scores = _whole_target(engine, self.teacher)
            self.rank(scores)
            _log(engine, {"event": "das3_split", "easy": int(self.easy.sum()), "hard": int((~self.easy).sum()),
                          "easy_max_entropy": float(scores[self.easy].max()) if bool(self.easy.any()) else None})

    def rank(self, scores: torch.Tensor) -> torch.Tensor:
        """Easy flags from per-image mean entropies (NaN = undecodable: counted hard, never drawn)."""
        s = torch.as_tensor(scores, dtype=torch.float64).clone()
        s[torch.isnan(s)] = float("inf")
        self.scores, self.easy = s, split_easy_hard(s, self.easy_share)
        return self.easy

    def _partner(self, i: int, easy_idx: list[int], hard_idx: list[int], pos: int) -> int | None:
        if self.mix_from == "easy" and easy_idx:
            return easy_idx[int(torch.randint(len(easy_idx), (1,)))]
        pool = hard_idx if self.mix_from == "hard" else easy_idx + hard_idx
        others = [j for j in pool if j != i]
        if not others:
            others = [j for j in easy_idx + hard_idx if j != i]
        if not others:
            return None
        if self.mix_from == "hard" and len(hard_idx) > 1:
            return hard_idx[(pos + 1) % len(hard_idx)]
        return others[int(torch.randint(len(others), (1,)))]

    def make_batch(self, x: torch.Tensor, probs: torch.Tensor, easy: torch.Tensor) -> dict[str, Any]:
        """Inputs and labels of one step: easy images with argmax labels, hard ones ClassMixed."""
        y_easy = probs.argmax(1)
        y_hard = positive_pseudo_labels(probs, self.top_k, self.cap, self.ignore_index)
        easy_idx = [int(i) for i in torch.nonzero(easy).flatten()]
        hard_idx = [int(i) for i in torch.nonzero(~easy).flatten()]
        lab = [y_easy[i] if i in easy_idx else y_hard[i] for i in range(x.shape[0])]
        xm, ym, mixed = [], [], 0
        for pos, b in enumerate(hard_idx):
            a = self._partner(b, easy_idx, hard_idx, pos) if self.lambda_mix > 0 else None
            if a is None:
                xm.append(x[b])
                ym.append(lab[b])
                continue
            xa, ya, _ = class_mix(x[a], lab[a], x[b], lab[b], mix_classes(lab[a], None, self.ignore_index))
            xm.append(xa)
            ym.append(ya)
            mixed += 1
        out: dict[str, Any] = {"mixed": mixed}
        if easy_idx:
            out["easy"] = (x[easy_idx], y_easy[easy_idx])
        if hard_idx:
            out["hard"] = (torch.stack(xm), torch.stack(ym))
        return out

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        if self.easy is None:
            raise RuntimeError(f"{self.name}: setup(engine) must run before the first step")
        t = batch["target"]
        x = t["x"]
        easy = self.easy[t["index"].cpu()].to(x.device)
        parts = self.make_batch(x, self._teacher_probs(x), easy)
        xs = [parts[k][0] for k in ("easy", "hard") if k in parts]
        z = self._logits(net, random_photometric(torch.cat(xs), self.jitter))
        losses: dict[str, torch.Tensor] = {}
        n_e = parts["easy"][0].shape[0] if "easy" in parts else 0
        if "easy" in parts and self.lambda_easy > 0:
            losses["easy"] = self.lambda_easy * seg_cross_entropy(z[:n_e], parts["easy"][1], self.ignore_index)
        if "hard" in parts and self.lambda_mix > 0:
            losses["mix"] = self.lambda_mix * seg_cross_entropy(z[n_e:], parts["hard"][1], self.ignore_index)
        if not losses:  # e.g. an all-easy batch with lambda_easy 0
            losses["mix" if self.lambda_mix > 0 else "easy"] = z.sum() * 0.0
        logs = {"easy_in_batch": float(n_e), "mixed": float(parts["mixed"])}
        return [Phase(losses, ("model",), logs)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.easy is None else {"easy": self.easy.to(torch.uint8), "scores": self.scores.float()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "easy" in state:
            self.easy = state["easy"].bool().cpu()
            self.scores = state.get("scores")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "easy_share": self.easy_share, "top_k": self.top_k, "cap": self.cap,
                "lambda_easy": self.lambda_easy, "lambda_mix": self.lambda_mix, "mix_from": self.mix_from}


# ------------------------------------------------------------------------------------------------
# the recipe: three engine runs
# ------------------------------------------------------------------------------------------------

_STAGE_CLASSES = {1: Das3Align, 2: Das3SelfTrain, 3: Das3Propagate}


def parse_stages(stages: Any) -> tuple[int, ...]:
    """"1,2,3" / [1, 3] / 2 -> sorted unique stage numbers in 1..3."""
    if isinstance(stages, str):
        items: Iterable[Any] = [s for s in stages.replace(" ", "").split(",") if s]
    elif isinstance(stages, int):
        items = [stages]
    else:
        items = list(stages or [])
    try:
        out = sorted({int(s) for s in items})
    except (TypeError, ValueError):
        raise ShiftkitError(f"stages must be numbers among 1, 2, 3, got {stages!r}", None, "e.g. --stages 1,2,3") from None
    if not out or any(s not in STAGES for s in out):
        raise ShiftkitError(f"stages must be among 1, 2, 3, got {stages!r}", None, "e.g. --stages 1,2,3 or --stages 2,3")
    return tuple(out)


class Das3:
    """The three-stage recipe. options: `stages` ("1,2,3"), per-stage keyword arguments as
    `stage1={...}`, `stage2={...}`, `stage3={...}` (see Das3Align / Das3SelfTrain / Das3Propagate),
    and per-stage engine settings `settings1={...}` ... (e.g. {"epochs": 2, "lr": 5e-5})."""

    name = "das3"
    streams = ("target",)
    uses_target_labels = False
    task = "segmentation"

    def __init__(self, stages: Any = STAGES, stage1: dict | None = None, stage2: dict | None = None,
                 stage3: dict | None = None, settings1: dict | None = None, settings2: dict | None = None,
                 settings3: dict | None = None, ignore_index: int = IGNORE_INDEX):
        self.stages = parse_stages(stages)
        self.stage_options = {1: dict(stage1 or {}), 2: dict(stage2 or {}), 3: dict(stage3 or {})}
        self.stage_settings = {1: dict(settings1 or {}), 2: dict(settings2 or {}), 3: dict(settings3 or {})}
        self.ignore_index = int(ignore_index)
        for k in STAGES:  # bad options fail now, before any training
            self.stage_method(k)

    def stage_method(self, k: int) -> _Das3Stage:
        cls = _STAGE_CLASSES[k]
        try:
            return cls(ignore_index=self.ignore_index, **self.stage_options[k])
        except TypeError as exc:
            raise ShiftkitError(f"bad option for das3 stage {k}: {exc}", None,
                                f"see the options of {cls.__name__} in shiftkit.adapt.das3") from None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "stages": list(self.stages),
                "stage_methods": {str(k): self.stage_method(k).config() for k in STAGES},
                "stage_settings": {str(k): v for k, v in self.stage_settings.items() if v}}

    def run(self, model: nn.Module, target: Any, *, out: str | os.PathLike, target_test: Any = None,
            **settings: Any) -> dict[str, Any]:
        """Run the chosen stages in OUT/stage<k>; returns OUT/metrics.json's figures."""
        from shiftkit.adapt.sourcefree import SourceFreeEngine, model_classes
        from shiftkit.io import atomic_write_json
        from shiftkit.train import checkpoint as ckpt
        from shiftkit.train.engine import TrainConfig

        t0 = time.time()
        root = Path(out)
        resume = bool(settings.pop("resume", False))
        progress = bool(settings.get("progress", True))
        if not hasattr(getattr(model, "model", model), "forward_multi"):
            raise ShiftkitError(f"das3 adapts segmentation models, {type(model).__name__} is not one", None,
                                "give a segmentation checkpoint (unet, deeplabv2), or use --method shot for a classifier")
        root.mkdir(parents=True, exist_ok=True)
        classes = model_classes(model)
        current = model
        summary: dict[str, Any] = {}
        last: dict[str, Any] | None = None
        skipped: set[str] = set()
        # check every stage folder before training anything
        state: dict[int, tuple[bool, bool]] = {}
        earlier_runs = None
        for k in self.stages:
            d = root / f"stage{k}"
            done = (d / "metrics.json").is_file() and (d / "checkpoints" / "best.safetensors").is_file()
            started = ckpt.exists(d / "checkpoints") or done
            state[k] = (done, started)
            if started and not resume:
                raise ShiftkitError(f"das3 stage {k} already ran in {d}", d,
                                    "add --resume to reuse finished stages and continue the rest, or choose a new --out")
            after = [s for s in self.stages if s < k]
            marker = d / "das3_stage.json"
            if started and marker.is_file() and json.loads(marker.read_text()).get("after") != after:
                was = json.loads(marker.read_text()).get("after")
                raise ShiftkitError(f"das3 stage {k} in {d} started from stages {was}, not {after}", d,
                                    "use the same --stages as that run, or choose a new --out")
            if started and earlier_runs is not None:
                raise ShiftkitError(f"das3 stage {k} in {d} ran before stage {earlier_runs}, which is still to run", d,
                                    "choose a new --out (its later stages would be stale)")
            if not done and earlier_runs is None:
                earlier_runs = k
        for k in STAGES:
            d = root / f"stage{k}"
            if k not in self.stages:
                summary[str(k)] = {"status": "left out"}
                continue
            done, started = state[k]
            if done:
                r = json.loads((d / "metrics.json").read_text())
                status = "reused"
                if progress:
                    print(f"das3 stage {k}: finished before, reusing {d}", file=sys.stderr)
            else:
                m = self.stage_method(k)
                kw = {**DAS3_DEFAULTS, "select": "label-free", **settings, **self.stage_settings[k]}
                kw["task"] = "segmentation"
                cfg = TrainConfig(source=None, target=target, target_test=target_test, out=os.fspath(d), method=m.name,
                                  resume=started, **kw)
                d.mkdir(parents=True, exist_ok=True)
                atomic_write_json(d / "das3_stage.json", {"stage": k, "after": [s for s in self.stages if s < k]})
                engine = SourceFreeEngine(cfg, model=current, method=m)
                try:
                    r = engine.run_training()
                finally:
                    if isinstance(m, Das3Align):
                        m.unfreeze()
                status = "resumed" if started else "ran"
            nxt, info, _ = ckpt.load_model(d / "checkpoints" / "best.safetensors")
            nxt.classes = list(info.get("classes") or classes)
            if settings.get("size") is None and (info.get("input_size") or [None])[0]:
                settings["size"] = int(info["input_size"][0])  # later stages train at the size this one used
            current = nxt
            skipped.update(r.get("skipped_images", []))
            summary[str(k)] = {"status": status, "method": r.get("method"), "out": str(d), "checkpoint": r.get("checkpoint"),
                               "selected_epoch": r.get("selected_epoch"), "selected": r.get("selected", {}),
                               "wall_s": r.get("wall_s"), "epochs_s": r.get("epochs_s")}
            last = r
        assert last is not None  # parse_stages keeps at least one stage
        result = {
            "out": str(root), "method": self.name, "checkpoint": last["checkpoint"], "select": last.get("select", "label-free"),
            "selected_epoch": last.get("selected_epoch"), "uses_target_labels": False, "stages": summary,
            "selected": last.get("selected", {}), "skipped_images": sorted(skipped), "wall_s": round(time.time() - t0, 3),
            "config": self.config(),
        }
        for key, v in last.get("selected", {}).items():
            if key.startswith(("target_test_", "select_")):
                result[key] = v
        atomic_write_json(root / "metrics.json", result)
        return result


__all__ = [
    "DAS3_DEFAULTS",
    "STAGES",
    "Das3",
    "Das3Align",
    "Das3Propagate",
    "Das3SelfTrain",
    "bn_adapt_target",
    "bn_affine_parameters",
    "category_thresholds",
    "complementary_cross_entropy",
    "focal_entropy_loss",
    "image_entropy",
    "negative_pseudo_labels",
    "parse_stages",
    "positive_pseudo_labels",
    "smoothed_prior",
    "split_easy_hard",
    "weighted_diversity_loss",
]
