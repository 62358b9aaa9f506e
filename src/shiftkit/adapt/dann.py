"""DANN (Ganin et al., JMLR 2016): align features by fooling a domain discriminator.

L_dann = w * BCE(D(GRL_lambda(f_s)), 1) / 2 + w * BCE(D(GRL_lambda(f_t)), 0) / 2, lambda(p) = 2/(1+exp(-10p)) - 1.
The gradient reversal layer lets one backward pass train D to separate the domains and the
feature extractor to confuse it.
"""

from __future__ import annotations

import torch

from shiftkit.adapt.base import ForwardOut, StepInfo, Term
from shiftkit.adapt.losses import dann_lambda, domain_bce, grad_reverse


def make_discriminator(in_dim: int, hidden: int) -> torch.nn.Module:
    from shiftkit.models.discriminators import DomainDiscriminator

    return DomainDiscriminator(in_dim, hidden=hidden)


class DANNTerm(Term):
    name = "dann"

    def __init__(self, weight: float = 1.0, hidden: int = 1024, gamma: float = 10.0):
        if weight < 0:
            raise ValueError(f"dann weight must be >= 0, got {weight}")
        self.weight, self.hidden, self.gamma = float(weight), int(hidden), float(gamma)
        self.disc: torch.nn.Module | None = None

    def setup(self, engine) -> None:
        self.disc = make_discriminator(engine.feature_dim, self.hidden)

    def modules(self):
        return {"discriminator": self.disc} if self.disc is not None else {}

    def losses(self, out: ForwardOut, step: StepInfo):
        lam = dann_lambda(step.progress, self.gamma)
        f = grad_reverse(torch.cat([out.f_s, out.f_t]).float(), lam)
        d = self.disc(f)
        ns = out.f_s.shape[0]
        loss = domain_bce(d[:ns], d[ns:])
        with torch.no_grad():
            acc = torch.cat([(d[:ns] > 0).float(), (d[ns:] <= 0).float()]).mean().item()
        return {"dann": self.weight * loss}, {"grl_lambda": lam, "domain_acc": acc}

    def config(self):
        return {"name": self.name, "weight": self.weight, "hidden": self.hidden, "gamma": self.gamma}
