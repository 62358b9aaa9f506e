"""Self-training with FixMatch consistency and class-wise (FlexMatch) thresholds.

Per step: p_w = softmax(z(weak(x_t))) (no gradient), pseudo label y^ = argmax p_w; the strong
view is trained on y^ where max p_w >= T_{y^}:  L_st = w * (1/N) sum_i mask_i CE(z(strong(x_t))_i, y^_i).
Thresholds (`thresholds=`):
- "flexmatch": T_c = tau * M(beta_c), beta_c = learning effect of class c (see
  losses.flexmatch_thresholds), floored at `floor` (default 0.8) so early noisy labels are not
  all accepted across a real domain gap: FlexMatch's warm-up starts every threshold near 0, and on
  a two-class toy shift that made pseudo labels collapse to one class (plain FlexMatch: floor 0);
- "fixed": T_c = tau for every class (FixMatch).
The per-sample record of confident predictions (FlexMatch's `selected_label`) is method state,
checkpointed with the run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftkit.adapt.base import ForwardOut, StepInfo, Term
from shiftkit.adapt.losses import flexmatch_thresholds, pseudo_label_loss


class SelfTrainingTerm(Term):
    name = "self-training"
    needs_views = True

    def __init__(self, weight: float = 1.0, tau: float = 0.95, thresholds: str = "flexmatch", floor: float = 0.8,
                 warmup: bool = True):
        if thresholds not in ("flexmatch", "fixed"):
            raise ValueError(f"thresholds must be 'flexmatch' or 'fixed', got {thresholds!r}")
        if not 0 < tau <= 1 or not 0 <= floor <= tau or weight < 0:
            raise ValueError(f"self-training needs 0 < tau <= 1, 0 <= floor <= tau, weight >= 0; got {tau}, {floor}, {weight}")
        self.weight, self.tau, self.mode, self.floor, self.warmup = float(weight), float(tau), thresholds, float(floor), bool(warmup)
        self.selected: torch.Tensor | None = None
        self.num_classes = 0

    def setup(self, engine) -> None:
        self.num_classes = engine.num_classes
        self.selected = torch.full((engine.stream_size("target"),), -1, dtype=torch.long)

    def thresholds(self) -> torch.Tensor:
        if self.mode == "fixed":
            return torch.full((self.num_classes,), self.tau)
        t = flexmatch_thresholds(self.selected, self.num_classes, self.tau, self.warmup)
        return t.clamp_min(self.floor)

    def losses(self, out: ForwardOut, step: StepInfo):
        probs_w = F.softmax(out.z_t.detach().float(), dim=1)
        thr = self.thresholds()
        loss, mask, labels = pseudo_label_loss(out.z_t_strong.float(), probs_w, thr)
        if out.index_t is not None:
            conf = probs_w.max(dim=1).values
            sure = (conf > self.tau).cpu()
            idx = out.index_t.cpu()[sure]
            self.selected[idx] = labels.cpu()[sure]
        return {"st": self.weight * loss}, {"st_mask_rate": mask.mean().item(), "st_thr_mean": thr.mean().item()}

    def state_dict(self):
        return {"selected": self.selected.clone()} if self.selected is not None else {}

    def load_state_dict(self, state):
        if "selected" in state:
            self.selected = state["selected"].clone().long()

    def config(self):
        return {"name": self.name, "weight": self.weight, "tau": self.tau, "thresholds": self.mode, "floor": self.floor,
                "warmup": self.warmup}
