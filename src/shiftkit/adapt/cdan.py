"""CDAN and CDAN+E (Long et al., NeurIPS 2018): condition the discriminator on predictions.

h = T(GRL(f), softmax(z).detach()) with T the multilinear map g (x) f (flattened outer product), or
its randomized form (f R_f) * (g R_g) / sqrt(K) when C*D > `max_dim`. D tells source from target.
CDAN+E weighs each sample by w = 1 + exp(-H(g)) (normalised to mean 1), so confident,
transferable samples dominate: L = w * sum_k w_k BCE_k / sum_k w_k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftkit.adapt.base import ForwardOut, StepInfo, Term
from shiftkit.adapt.dann import make_discriminator
from shiftkit.adapt.losses import cdan_condition, dann_lambda, domain_bce, entropy_weights, grad_reverse


class CDANTerm(Term):
    def __init__(self, entropy_conditioning: bool = False, weight: float = 1.0, hidden: int = 1024,
                 random_dim: int = 1024, max_dim: int = 4096, gamma: float = 10.0):
        if weight < 0:
            raise ValueError(f"cdan weight must be >= 0, got {weight}")
        self.entropy_conditioning = bool(entropy_conditioning)
        self.name = "cdan+e" if entropy_conditioning else "cdan"
        self.weight, self.hidden, self.random_dim, self.max_dim, self.gamma = float(weight), int(hidden), int(random_dim), int(max_dim), float(gamma)
        self.disc = None
        self.rf = self.rg = None

    def setup(self, engine) -> None:
        d, c = engine.feature_dim, engine.num_classes
        if d * c > self.max_dim:
            g = torch.Generator().manual_seed(12345)  # fixed: part of the method, not a trained weight
            self.rf = torch.randn(d, self.random_dim, generator=g)
            self.rg = torch.randn(c, self.random_dim, generator=g)
            in_dim = self.random_dim
        else:
            in_dim = d * c
        self.disc = make_discriminator(in_dim, self.hidden)

    def modules(self):
        return {"discriminator": self.disc} if self.disc is not None else {}

    def losses(self, out: ForwardOut, step: StepInfo):
        lam = dann_lambda(step.progress, self.gamma)
        f = torch.cat([out.f_s, out.f_t]).float()
        g = F.softmax(torch.cat([out.z_s, out.z_t]).float(), dim=1).detach()
        rf = rg = None
        if self.rf is not None:
            rf, rg = self.rf.to(f.device), self.rg.to(f.device)
        h = cdan_condition(grad_reverse(f, lam), g, rf, rg)
        d = self.disc(h)
        ns = out.f_s.shape[0]
        if self.entropy_conditioning:
            w = entropy_weights(g)
            loss = domain_bce(d[:ns], d[ns:], w[:ns], w[ns:])
        else:
            loss = domain_bce(d[:ns], d[ns:])
        with torch.no_grad():
            acc = torch.cat([(d[:ns] > 0).float(), (d[ns:] <= 0).float()]).mean().item()
        return {self.name: self.weight * loss}, {"grl_lambda": lam, "domain_acc": acc}

    def config(self):
        return {"name": self.name, "weight": self.weight, "hidden": self.hidden, "randomized": self.rf is not None,
                "random_dim": self.random_dim, "gamma": self.gamma}
