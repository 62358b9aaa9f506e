"""ADVENT (Vu et al., CVPR 2019): entropy minimisation for segmentation adaptation.

- MinEnt (direct):  L = L_seg(source) + lambda_ent sum_l w_l mean_{n,h,w} sum_c -p log p / log C   on target
  (paper: lambda_ent 0.001 on the main level, 0.0002 on the auxiliary level when multi-level).
  Class-ratio prior (`crp`, MinEnt+CRP): + lambda_crp * sum_c max(0, mu pi_c - q_c), q the batch's mean
  target prediction, pi the source class ratios (counted over every source batch seen), mu 0.5;
  `crp_mode="kl"` uses KL(pi || q) instead of the hinge.
- AdvEnt (adversarial): AdaptSegNet's two-phase recipe with the discriminator on weighted
  self-information maps I = -p log p / log C (C channels) instead of softmax maps
  (lambda_adv 0.001 main, 0.0002 aux; D Adam lr 1e-4).
- Ensemble: average the softmax probabilities of a MinEnt and an AdvEnt model (`ensemble_probs`),
  the paper's best result (`shiftkit evaluate --model A --model B`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.adaptseg import OutputAdversarial
from shiftkit.adapt.base import Phase, StepInfo
from shiftkit.adapt.seg_base import SegMethod, _check_weight, levels
from shiftkit.adapt.seg_losses import IGNORE_INDEX, class_ratio_prior_loss, minent_loss, self_information
from shiftkit.errors import ShiftkitError


class _ClassRatios:
    """Running source class ratios pi_c from every labelled source pixel seen (kept in the checkpoint)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def update(self, y: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        m = y.reshape(-1)
        m = m[(m != ignore_index) & (m >= 0) & (m < num_classes)]
        c = torch.bincount(m.long(), minlength=num_classes).double().cpu()
        self.counts = c if self.counts is None else self.counts + c

    def ratios(self) -> torch.Tensor:
        if self.counts is None or float(self.counts.sum()) == 0:
            raise ShiftkitError("no source pixel counted yet for the class-ratio prior")
        return self.counts / self.counts.sum()


class MinEnt(SegMethod):
    """Direct entropy minimisation on target predictions (one phase), optionally with the class-ratio prior."""

    name = "minent"

    def __init__(self, lambda_ent: float = 0.001, lambda_ent_aux: float = 0.0002, multi_level: bool = True,
                 lambda_seg_aux: float = 0.1, crp: bool = False, lambda_crp: float = 1.0, crp_mode: str = "hinge",
                 crp_mu: float = 0.5, ignore_index: int = IGNORE_INDEX, class_weights=None):
        super().__init__(lambda_seg_aux=lambda_seg_aux, multi_level=multi_level, ignore_index=ignore_index,
                         class_weights=class_weights)
        self.lambda_ent = _check_weight("lambda_ent", lambda_ent)
        self.lambda_ent_aux = _check_weight("lambda_ent_aux", lambda_ent_aux)
        if crp_mode not in ("hinge", "kl"):
            raise ShiftkitError(f"crp_mode must be 'hinge' or 'kl', got {crp_mode!r}")
        self.crp, self.lambda_crp, self.crp_mode, self.crp_mu = bool(crp), _check_weight("lambda_crp", lambda_crp), crp_mode, float(crp_mu)
        self._ratios = _ClassRatios()
        if self.crp:
            self.name = "minent+crp"

    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        xs, ys, xt = batch["source"]["x"], batch["source"]["y"], batch["target"]["x"]
        ns = xs.shape[0]
        outs = levels(net, torch.cat([xs, xt]), self.multi_level)
        outs_s, outs_t = [o[:ns] for o in outs], [o[ns:] for o in outs]
        losses = self.supervised(outs_s, ys)
        losses["ent"] = self.lambda_ent * minent_loss(outs_t[0])
        if len(outs_t) > 1 and self.lambda_ent_aux > 0:
            losses["ent_aux"] = self.lambda_ent_aux * minent_loss(outs_t[1])
        if self.crp:
            self._ratios.update(ys.detach(), outs[0].shape[1], self.ignore_index)
            prior = self._ratios.ratios().to(outs[0].device, torch.float32)
            losses["crp"] = self.lambda_crp * class_ratio_prior_loss(F.softmax(outs_t[0].float(), 1), prior, self.crp_mode,
                                                                     self.crp_mu)
        return [Phase(losses, ("model",))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self._ratios.counts is None else {"class_counts": self._ratios.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "class_counts" in state:
            self._ratios.counts = state["class_counts"].double().cpu()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lambda_ent": self.lambda_ent, "lambda_ent_aux": self.lambda_ent_aux, "crp": self.crp,
                "lambda_crp": self.lambda_crp, "crp_mode": self.crp_mode, "crp_mu": self.crp_mu}


class AdvEnt(OutputAdversarial):
    """AdaptSegNet's recipe on self-information maps (see the module doc)."""

    name = "advent"
    space = "entropy"

    def disc_input(self, logits: torch.Tensor) -> torch.Tensor:
        return self_information(F.softmax(logits.float(), dim=1))


@torch.no_grad()
def ensemble_probs(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Mean softmax of the models' main outputs: p = (1/M) sum_m softmax(G_m(x)), (N, C, H, W)."""
    if not models:
        raise ShiftkitError("an ensemble needs at least one model")
    out = None
    for m in models:
        z = m(x) if not hasattr(m, "forward_multi") else m.forward_multi(x)[0]
        p = F.softmax(z.float(), dim=1)
        if out is not None and p.shape != out.shape:
            raise ShiftkitError(f"ensemble members disagree on output shape: {tuple(p.shape)} vs {tuple(out.shape)}", None,
                                "ensemble models trained on the same classes")
        out = p if out is None else out + p
    return out / len(models)


def register() -> None:
    from shiftkit.adapt.registry import register as _register
    from shiftkit.adapt.seg_base import build_seg_method

    _register("advent", lambda **kw: build_seg_method("advent", **kw))
    _register("minent", lambda **kw: build_seg_method("minent", **kw))
