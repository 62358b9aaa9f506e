"""FDA with self-training (Yang & Soatto, CVPR 2020), for segmentation.

Stage 1 (FDA): each source image takes the low-frequency amplitude of a target image of the same
batch (`shiftkit.transfer.functional.fda`, window beta), its labels unchanged, plus the robust
entropy term on target predictions once `ent_start` of training has passed (FDA's switch2entropy,
50k of 150k steps):
    L = CE(G(FDA(x_s, x_t; beta)), y_s) + lambda_ent mean (E_t^2 + 1e-8)^eta,  E = H(p)/log C,
    lambda_ent 0.005, eta 2.0 (paper).
Stage 2 (self-training, from `st_start` of training on, or from the start with `teachers`):
pseudo labels y^ = argmax p over the whole target set, kept where max p >= t_c with FDA's class-wise
thresholds t_c = min(median confidence of pixels predicted c, 0.9) (`classwise_thresholds`);
    L += lambda_st CE(G(x_t), y^)   (ignored pixels: 255; unweighted as in the paper: the class-wise
    thresholds already balance the classes, and `class_weights` (meant for the labelled masks) would
    multiply any foreground over-prediction of the pseudo labels; `st_class_weights=True` applies them).
p comes from the current model, or the mean softmax of `teachers` (checkpoints, e.g. FDA models
trained with beta 0.01, 0.05, 0.09: the paper's multi-band transfer ensemble, FDA-MBT).
`st_prior="source"` (or explicit class shares) caps each class's pseudo labels at its prior share of
the target pixels (`classwise_thresholds(prior=...)`), the prior being the pixel shares of the source
masks seen in training; not in the paper: on B5 the FDA-trained model labels photo texture as digits
and the plain rule locked that in.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.base import Phase, StepInfo
from shiftkit.adapt.seg_base import SegMethod, _check_weight, levels
from shiftkit.adapt.seg_losses import (
    IGNORE_INDEX,
    charbonnier_entropy_loss,
    classwise_thresholds,
    seg_cross_entropy,
)
from shiftkit.device import forward_chunked
from shiftkit.errors import ShiftkitError


@torch.no_grad()
def predict_stream(models: Sequence[nn.Module], dataset, device: torch.device | str = "cpu", batch_size: int = 64,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(confidence (N, H, W) float32, labels (N, H, W) uint8, dataset indices (N,)) of the mean softmax
    of `models` over every item of `dataset` (items as the training loaders yield: "x", "index")."""
    from tqdm import tqdm

    from shiftkit.adapt.advent import ensemble_probs
    from shiftkit.train.seg_data import seg_batches

    was = [m.training for m in models]
    for m in models:
        m.eval()
    confs, labs, idx = [], [], []
    try:
        for b in tqdm(seg_batches(dataset, batch_size, 0), desc="pseudo labels", file=sys.stderr, disable=not progress,
                      leave=False):
            if b["x"] is None:
                continue
            x = b["x"].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            p = forward_chunked(lambda v: ensemble_probs(models, v), x)
            c, l = p.max(1)
            confs.append(c.cpu())
            labs.append(l.to(torch.uint8).cpu())
            idx.append(b["index"])
    finally:
        for m, w in zip(models, was, strict=True):
            m.train(w)
    if not confs:
        raise ShiftkitError("no decodable target image to pseudo-label")
    return torch.cat(confs), torch.cat(labs), torch.cat(idx)


class FDASelfTraining(SegMethod):
    """See the module doc. Options: beta, lambda_ent, eta, ent_start, self_training, st_start, lambda_st,
    st_quantile, st_cap, st_class_weights, teachers (checkpoint paths or modules)."""

    name = "fda-st"

    def __init__(self, beta: float = 0.01, lambda_ent: float = 0.005, eta: float = 2.0, ent_start: float = 1 / 3,
                 self_training: bool = True, st_start: float = 0.5, lambda_st: float = 1.0, st_quantile: float = 0.5,
                 st_cap: float = 0.9, teachers: Sequence[Any] | None = None, st_class_weights: bool = False,
                 st_prior: str | Sequence[float] | None = None, multi_level: bool = True,
                 lambda_seg_aux: float = 0.1, ignore_index: int = IGNORE_INDEX, class_weights=None):
        super().__init__(lambda_seg_aux=lambda_seg_aux, multi_level=multi_level, ignore_index=ignore_index,
                         class_weights=class_weights)
        if not 0.0 < float(beta) <= 0.5:
            raise ShiftkitError(f"beta must be in (0, 0.5], got {beta}", None, "FDA uses 0.01 to 0.09")
        for nm, v in (("ent_start", ent_start), ("st_start", st_start), ("st_quantile", st_quantile)):
            if not 0.0 <= float(v) <= 1.0:
                raise ShiftkitError(f"{nm} must be in [0, 1], got {v}")
        if not 0.0 < float(st_cap) <= 1.0:
            raise ShiftkitError(f"st_cap must be in (0, 1], got {st_cap}")
        self.beta, self.eta = float(beta), float(eta)
        if not self.eta > 0:
            raise ShiftkitError(f"eta must be > 0, got {eta}")
        self.lambda_ent, self.ent_start = _check_weight("lambda_ent", lambda_ent), float(ent_start)
        self.self_training, self.st_start = bool(self_training), float(st_start)
        self.lambda_st = _check_weight("lambda_st", lambda_st)
        self.st_quantile, self.st_cap = float(st_quantile), float(st_cap)
        self.st_class_weights = bool(st_class_weights)
        if st_prior is not None and not isinstance(st_prior, str):
            st_prior = [float(v) for v in st_prior]
            if any(v < 0 for v in st_prior) or not sum(st_prior) > 0:
                raise ShiftkitError(f"st_prior shares must be >= 0 with a positive sum, got {st_prior}")
        elif st_prior not in (None, "source"):
            raise ShiftkitError(f"st_prior must be 'source', class shares or None, got {st_prior!r}")
        self.st_prior = st_prior
        self.source_counts: torch.Tensor | None = None  # pixels per class of the source masks seen so far
        if isinstance(teachers, (str, bytes)):
            teachers = [t for t in str(teachers).split(",") if t]
        self.teachers = list(teachers or [])
        if self.teachers and not self.self_training:
            raise ShiftkitError("teachers only make sense with self-training", None, "drop teachers or keep self_training")
        self.name = "fda-st" if self.self_training else "fda"
        self.pseudo: torch.Tensor | None = None  # (N, H, W) uint8, 255 = ignored
        self.thresholds: torch.Tensor | None = None

    # --- pseudo labels ----------------------------------------------------------------------------
    def _st_due(self, engine: Any) -> bool:
        if not self.self_training or self.pseudo is not None:
            return False
        if self.teachers:
            return True
        total = max(1, int(getattr(engine, "total_steps", 1)))
        return int(getattr(engine, "global_step", 0)) >= int(round(self.st_start * total))

    def make_pseudo_labels(self, engine: Any) -> dict[str, Any]:
        """Pseudo-label the whole target stream (teachers' mean, else the current model); returns stats."""
        device = getattr(engine, "device", "cpu")
        if self.teachers:
            from shiftkit.train import checkpoint as ckpt

            models = [t.to(device) if isinstance(t, nn.Module) else ckpt.load_model(t, device)[0] for t in self.teachers]
        else:
            models = [getattr(engine.net, "model", engine.net)]
        bs = int(getattr(getattr(engine, "cfg", None), "eval_batch_size", 64) or 64)
        progress = bool(getattr(getattr(engine, "cfg", None), "progress", False))
        conf, lab, idx = predict_stream(models, engine.streams["target"], device, bs, progress)
        c = int(getattr(engine, "num_classes", 0) or int(lab.max()) + 1)
        thr = classwise_thresholds(conf, lab.long(), c, self.st_quantile, self.st_cap, self.prior(c))
        keep = conf >= thr[lab.long()]
        lab = lab.clone()
        lab[~keep] = IGNORE_INDEX
        n = len(engine.streams["target"])
        pseudo = torch.full((n, *lab.shape[1:]), IGNORE_INDEX, dtype=torch.uint8)
        pseudo[idx] = lab
        self.pseudo, self.thresholds = pseudo, thr
        stats = {"event": "pseudo_labels", "kept_share": float(keep.float().mean()), "thresholds": [round(float(t), 4) for t in thr],
                 "teachers": len(self.teachers)}
        run = getattr(engine, "run", None)
        if run is not None and hasattr(run, "log"):
            run.log(stats)
        return stats

    def prior(self, num_classes: int) -> torch.Tensor | None:
        """The class prior of the pseudo labels: None, the given shares, or the source masks' pixel shares."""
        if self.st_prior is None:
            return None
        if self.st_prior == "source":
            if self.source_counts is None or not float(self.source_counts.sum()) > 0:
                raise ShiftkitError("st_prior='source' needs labelled source pixels before the pseudo labels",
                                    None, "start self-training later (st_start > 0), or give the class shares")
            counts = self.source_counts[:num_classes].double()
            return counts / counts.sum()
        if len(self.st_prior) != num_classes:
            raise ShiftkitError(f"st_prior has {len(self.st_prior)} shares for {num_classes} classes")
        return torch.tensor(self.st_prior, dtype=torch.float64)

    def on_epoch_start(self, engine: Any) -> None:
        if self._st_due(engine):
            self.make_pseudo_labels(engine)

    # --- the step -------------------------------------------------------------------------------
    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        from shiftkit.transfer.functional import fda

        xs, ys, xt = batch["source"]["x"], batch["source"]["y"], batch["target"]["x"]
        ns = xs.shape[0]
        if self.st_prior == "source" and self.pseudo is None:
            seen = ys[ys != self.ignore_index].flatten().long().cpu()
            counts = torch.bincount(seen, minlength=int(seen.max()) + 1 if seen.numel() else 1).double()
            if self.source_counts is None:
                self.source_counts = counts
            else:
                n = max(len(counts), len(self.source_counts))
                self.source_counts = F.pad(self.source_counts, (0, n - len(self.source_counts))) + F.pad(counts, (0, n - len(counts)))
        with torch.no_grad():
            tgt = xt if xt.shape[0] == ns else xt[torch.arange(ns, device=xt.device) % xt.shape[0]]
            xs_fda = fda(xs.float(), tgt.float(), self.beta)
        outs = levels(net, torch.cat([xs_fda, xt]), self.multi_level)
        outs_s, outs_t = [o[:ns] for o in outs], [o[ns:] for o in outs]
        losses = self.supervised(outs_s, ys)
        logs: dict[str, float] = {}
        if self.lambda_ent > 0 and step.progress >= self.ent_start:
            losses["ent"] = self.lambda_ent * charbonnier_entropy_loss(outs_t[0], self.eta)
        if self.pseudo is not None and self.lambda_st > 0:
            idx = batch["target"].get("index")
            if idx is None:
                raise ShiftkitError("fda-st self-training needs target batch indices")
            yt = self.pseudo[idx.cpu()].to(xt.device).long()
            if yt.shape[-2:] != outs_t[0].shape[-2:]:
                raise ShiftkitError(f"pseudo labels {tuple(yt.shape[-2:])} do not match predictions {tuple(outs_t[0].shape[-2:])}")
            w = self._weight(outs_t[0]) if self.st_class_weights else None
            losses["st"] = self.lambda_st * seg_cross_entropy(outs_t[0], yt, IGNORE_INDEX, w)
            logs["st_kept"] = float((yt != IGNORE_INDEX).float().mean())
        return [Phase(losses, ("model",), logs)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {} if self.source_counts is None else {"source_counts": self.source_counts}
        if self.pseudo is None:
            return state
        return {**state, "pseudo": self.pseudo, "thresholds": self.thresholds}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "source_counts" in state:
            self.source_counts = state["source_counts"].double().cpu()
        if "pseudo" in state:
            self.pseudo = state["pseudo"].to(torch.uint8).cpu()
            self.thresholds = state.get("thresholds")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta": self.beta, "lambda_ent": self.lambda_ent, "eta": self.eta,
                "ent_start": self.ent_start, "self_training": self.self_training, "st_start": self.st_start,
                "lambda_st": self.lambda_st, "st_quantile": self.st_quantile, "st_cap": self.st_cap,
                "st_class_weights": self.st_class_weights, "st_prior": self.st_prior,
                "teachers": [t if isinstance(t, str) else type(t).__name__ for t in self.teachers]}


def register() -> None:
    from shiftkit.adapt.registry import register as _register
    from shiftkit.adapt.seg_base import build_seg_method

    _register("fda-st", lambda **kw: build_seg_method("fda-st", **kw))
