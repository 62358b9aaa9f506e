"""MCC (Jin et al., ECCV 2020): minimise class confusion of target predictions.

L_mcc = w * mcc_loss(z_t, T) (see losses.mcc_loss). Works alone or on top of DANN/CDAN.
"""

from __future__ import annotations

from shiftkit.adapt.base import ForwardOut, StepInfo, Term
from shiftkit.adapt.losses import mcc_loss


class MCCTerm(Term):
    name = "mcc"

    def __init__(self, weight: float = 1.0, temperature: float = 2.5):
        if weight < 0 or temperature <= 0:
            raise ValueError(f"mcc needs weight >= 0 and temperature > 0, got {weight}, {temperature}")
        self.weight, self.temperature = float(weight), float(temperature)

    def losses(self, out: ForwardOut, step: StepInfo):
        return {"mcc": self.weight * mcc_loss(out.z_t.float(), self.temperature)}, {}

    def config(self):
        return {"name": self.name, "weight": self.weight, "temperature": self.temperature}


class IMTerm(Term):
    """Information maximisation on the target: L = w * (mean H(p_t) - H(mean p_t))."""

    name = "im"

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def losses(self, out, step):
        from shiftkit.adapt.losses import information_maximization

        return {"im": self.weight * information_maximization(out.z_t.float())}, {}

    def config(self):
        return {"name": self.name, "weight": self.weight}
