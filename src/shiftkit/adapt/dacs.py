"""DACS: domain adaptation via cross-domain mixed sampling (Tranheden et al., WACV 2021), for segmentation.

Source pixels of a random half of the classes in each source mask are pasted onto a target image
(ClassMix); the rest of the mixed image is target, labelled by a mean teacher. The student learns
target backgrounds around objects whose labels are known, and the teacher's labels for the rest:
    y^_t = argmax G'(x_t)             (teacher G' = EMA of the student G, on the plain target batch;
                                       its BatchNorm normalises with that batch's own statistics)
    q    = |{p : max_c softmax(G'(x_t))_pc >= tau}| / |pixels|   (one confidence weight per batch, tau 0.968)
    M_i  = [y_s,i in C_i],  C_i = ceil(n_i / 2) of the n_i classes in y_s,i, drawn at random
    x_m  = aug(M x_s + (1 - M) x_t),  y_m = M y_s + (1 - M) y^_t,  weight_m = M + (1 - M) q
    L    = L_seg(G(x_s), y_s) + lambda_mix L_seg(G(x_m), y_m; weight_m)   (both multi-level, aux x 0.1)
`class_weights` enter the source term only, unless `mix_class_weights`: as in the paper the mixed term
has none, since weights meant for labelled masks would multiply the teacher's foreground over-prediction
(the pitfall `fda_st` documents; on B5, with them, DACS labelled 20% of target-train pixels as digits, true 6%).
    after each step: theta' <- a theta' + (1 - a) theta,  a = min(1 - 1 / (t + 1), alpha),  alpha 0.99
aug, one draw per batch as in the paper's code: colour jitter (strength 0.2 on brightness, contrast,
saturation and hue) with probability 0.2, Gaussian blur (sigma ~ U(0.15, 1.15), kernel about a tenth
of the image side, odd) with probability 0.5. The pixel labels never move, so the masks stay valid.
The teacher is created from the student at the first step (and restored from the checkpoint on resume).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from shiftkit.adapt.base import Phase, StepInfo
from shiftkit.adapt.seg_base import SegMethod, _check_weight, levels, seg_model
from shiftkit.adapt.seg_losses import IGNORE_INDEX, seg_cross_entropy
from shiftkit.errors import ShiftkitError


def mix_classes(labels: torch.Tensor, generator: torch.Generator | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ClassMix's class draw: ceil(n / 2) of the n classes present in `labels` (ignore_index excluded)."""
    present = torch.unique(labels[labels != ignore_index].cpu())
    n = present.numel()
    if n == 0:
        return present
    pick = torch.randperm(n, generator=generator)[: (n + 1) // 2]
    return present[pick].to(labels.device)


def class_mix(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
              classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ClassMix (Olsson et al. 2021): paste image a's pixels of `classes` onto image b.
    M = [y_a in classes]; x = M x_a + (1 - M) x_b; y = M y_a + (1 - M) y_b. x (C, H, W) or (N, C, H, W),
    y (H, W) or (N, H, W). Returns (x, y, M), M bool shaped like y (for per-pixel weights of the mix)."""
    if x_a.shape != x_b.shape or y_a.shape != y_b.shape or x_a.shape[-2:] != y_a.shape[-2:]:
        raise ValueError(f"images {tuple(x_a.shape)}, {tuple(x_b.shape)} and masks {tuple(y_a.shape)}, "
                         f"{tuple(y_b.shape)} must agree")
    m = torch.isin(y_a, torch.as_tensor(classes, dtype=y_a.dtype, device=y_a.device))
    return torch.where(m.unsqueeze(-3), x_a, x_b), torch.where(m, y_a, y_b), m


def blur_kernel_size(side: int) -> int:
    """DACS's Gaussian kernel: about a tenth of the image side, odd, at least 3."""
    k = -(-side // 10)
    return max(3, k - 1 + k % 2)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """theta' <- alpha theta' + (1 - alpha) theta over the parameters (buffers are the teacher's own)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)


class DACS(SegMethod):
    """See the module doc. Options: alpha (EMA, 0.99), tau (confidence, 0.968), lambda_mix (1),
    jitter (colour-jitter strength, 0.2), jitter_p (0.2), blur_p (0.5), mix_class_weights (False)."""

    name = "dacs"

    def __init__(self, alpha: float = 0.99, tau: float = 0.968, lambda_mix: float = 1.0, jitter: float = 0.2,
                 jitter_p: float = 0.2, blur_p: float = 0.5, mix_class_weights: bool = False,
                 multi_level: bool = True, lambda_seg_aux: float = 0.1,
                 ignore_index: int = IGNORE_INDEX, class_weights=None):
        super().__init__(lambda_seg_aux=lambda_seg_aux, multi_level=multi_level, ignore_index=ignore_index,
                         class_weights=class_weights)
        for nm, v, open_at_0 in (("alpha", alpha, False), ("tau", tau, True), ("jitter", jitter, False),
                                 ("jitter_p", jitter_p, False), ("blur_p", blur_p, False)):
            number = not isinstance(v, bool) and isinstance(v, (int, float))
            if not number or v > 1.0 or v < 0.0 or (open_at_0 and v == 0.0):
                raise ShiftkitError(f"{nm} must be a number in {'(0' if open_at_0 else '[0'}, 1], got {v!r}", None,
                                    "DACS uses alpha 0.99, tau 0.968, jitter 0.2 with p 0.2, blur p 0.5")
        self.alpha, self.tau = float(alpha), float(tau)
        self.jitter, self.jitter_p, self.blur_p = float(jitter), float(jitter_p), float(blur_p)
        self.lambda_mix = _check_weight("lambda_mix", lambda_mix)
        self.mix_class_weights = bool(mix_class_weights)
        self.teacher: nn.Module | None = None
        self._teacher_state: dict[str, torch.Tensor] | None = None  # from a checkpoint, until the teacher exists

    # --- the teacher ------------------------------------------------------------------------------
    def _teacher_for(self, net: nn.Module, step: int) -> nn.Module:
        student = seg_model(net)
        if self.teacher is None:
            self.teacher = copy.deepcopy(student)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if self._teacher_state is not None:  # resumed: the teacher as it was after the last step
                self.teacher.load_state_dict(self._teacher_state)
                self._teacher_state = None
        if step > 0:  # a no-op for a teacher just copied from the student
            ema_update(self.teacher, student, min(1.0 - 1.0 / (step + 1), self.alpha))
        return self.teacher

    @torch.no_grad()
    def pseudo_labels(self, teacher: nn.Module, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (N, H, W), confidence weight q: the share of pixels at max probability >= tau)."""
        teacher.train()  # BatchNorm on the target batch's own statistics, as the reference code runs it
        conf, lab = levels(teacher, x_t, False)[0].float().softmax(1).max(1)
        return lab, (conf >= self.tau).float().mean()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """One colour-jitter and one blur decision per batch (DACS's strong transform, after mixing)."""
        import kornia

        if self.jitter > 0 and float(torch.rand(())) < self.jitter_p and x.shape[1] == 3:
            s = self.jitter
            x = kornia.augmentation.ColorJiggle(s, s, s, s, p=1.0)(x)
        if float(torch.rand(())) < self.blur_p:
            sigma = 0.15 + float(torch.rand(()))
            k = blur_kernel_size(min(x.shape[-2:]))
            x = kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma))
        return x.clamp(0.0, 1.0)

    def mix(self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, q: torch.Tensor,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paste source image i's drawn classes onto target image i: (x_m, y_m, weight_m)."""
        n = min(xs.shape[0], xt.shape[0])
        xm, ym, wm = [], [], []
        for i in range(n):
            x, y, m = class_mix(xs[i], ys[i], xt[i], yt[i], mix_classes(ys[i], None, self.ignore_index))
            xm.append(x)
            ym.append(y)
            wm.append(torch.where(m, torch.ones_like(q), q.expand_as(m)))
        return torch.stack(xm), torch.stack(ym), torch.stack(wm)

    # --- the step -------------------------------------------------------------------------------
    def phases(self, net, batch, step: StepInfo) -> list[Phase]:
        xs, ys, xt = batch["source"]["x"], batch["source"]["y"], batch["target"]["x"]
        teacher = self._teacher_for(net, step.step)
        yt, q = self.pseudo_labels(teacher, xt)
        xm, ym, wm = self.mix(xs, ys, xt, yt, q)
        xm = self.augment(xm)
        ns = xs.shape[0]
        outs = levels(net, torch.cat([xs, xm]), self.multi_level)
        losses = self.supervised([o[:ns] for o in outs], ys)
        if self.lambda_mix > 0:
            w = self._weight(outs[0]) if self.mix_class_weights else None
            mixed = [o[ns:] for o in outs]
            losses["mix"] = self.lambda_mix * seg_cross_entropy(mixed[0], ym, self.ignore_index, w, wm)
            if len(mixed) > 1 and self.lambda_seg_aux > 0:
                losses["mix_aux"] = self.lambda_mix * self.lambda_seg_aux * seg_cross_entropy(
                    mixed[1], ym, self.ignore_index, w, wm)
        return [Phase(losses, ("model",), {"pseudo_weight": float(q)})]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self._teacher_state if self.teacher is None else self.teacher.state_dict()
        return {f"teacher.{k}": v.detach().clone() for k, v in (state or {}).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        bad = [k for k in state if not k.startswith("teacher.")]
        if bad:
            raise ValueError(f"dacs keeps only its teacher, got keys {bad[:5]}")
        if state:
            self._teacher_state = {k[len("teacher."):]: v for k, v in state.items()}
            if self.teacher is not None:
                self.teacher.load_state_dict(self._teacher_state)
                self._teacher_state = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "tau": self.tau, "lambda_mix": self.lambda_mix,
                "jitter": self.jitter, "jitter_p": self.jitter_p, "blur_p": self.blur_p,
                "mix_class_weights": self.mix_class_weights}


def register() -> None:
    from shiftkit.adapt.registry import register as _register
    from shiftkit.adapt.seg_base import build_seg_method

    _register("dacs", lambda **kw: build_seg_method("dacs", **kw))
