"""Contrastive unpaired translation (CUT, Park et al., ECCV 2020): losses and the recipe.

Losses are plain functions (formula in the docstring, tested against hand computations); `CUT`
holds the three networks (generator G, PatchGAN discriminator D, patch MLP heads F) and builds the
two phases of one step (D update, then G + F update) in the `shiftkit.adapt.base.Phase` form.

Settings (`CUTSettings.preset`):
- `cut`:     lambda_GAN = 1, lambda_NCE = 1, identity NCE on target -> target (lambda_Y = 1).
- `fastcut`: lambda_GAN = 1, lambda_NCE = 10, no identity term, flip-equivariance augmentation
  (the real/fake pair seen by the NCE loss is flipped together at random).
Both: 256 patches per layer, temperature 0.07, MLP heads 256-d, LSGAN, Adam lr 2e-4, betas (0.5, 0.999).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.adapt.base import Phase
from shiftkit.errors import ShiftkitError
from shiftkit.models.translator import PatchDiscriminator, PatchSampleMLP, ResnetGenerator

PRESETS = ("cut", "fastcut")


def patch_nce_loss(q: torch.Tensor, k: torch.Tensor, tau: float = 0.07, reduction: str = "mean") -> torch.Tensor:
    """PatchNCE: for query patch i of an image, its positive is key patch i of the same image and its
    negatives are the other N-1 key patches of that image (CUT's default, negatives within an image):

        l_ij = <q_i, k_j> / tau,  loss_i = -log( exp(l_ii) / sum_j exp(l_ij) )  = CE(l_i., target i)

    q, k: (B, N, D), usually L2-normalised; k is detached (no gradient through the keys), as in CUT.
    CUT masks the diagonal of the negatives with -10 before dividing by tau; for unit vectors that
    term is exp(-10/tau), which is 0 to float precision, so the plain cross-entropy is the same loss.
    Returns the mean over B*N patches, or (B, N) with reduction="none".
    """
    if q.ndim != 3 or q.shape != k.shape:
        raise ShiftkitError(f"patch_nce_loss needs q and k of the same (B, N, D) shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not tau > 0:
        raise ShiftkitError(f"tau must be > 0, got {tau}")
    if reduction not in ("mean", "none"):
        raise ShiftkitError(f"reduction must be mean or none, got {reduction!r}")
    b, n, _ = q.shape
    logits = torch.bmm(q, k.detach().transpose(1, 2)).float() / tau  # (B, N, N), positives on the diagonal
    target = torch.arange(n, device=q.device).expand(b, n)
    loss = F.cross_entropy(logits.reshape(b * n, n), target.reshape(-1), reduction="none").view(b, n)
    return loss.mean() if reduction == "mean" else loss


def lsgan_loss(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN (Mao et al. 2017), as in CUT: mean((D(x) - t)^2), t = 1 for real, 0 for fake."""
    t = 1.0 if target_is_real else 0.0
    return ((pred.float() - t) ** 2).mean()


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor) -> torch.Tensor:
    """D's LSGAN loss: 0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2))."""
    return 0.5 * (lsgan_loss(pred_real, True) + lsgan_loss(pred_fake, False))


def generator_gan_loss(pred_fake: torch.Tensor) -> torch.Tensor:
    """G's LSGAN loss: mean((D(G(x)) - 1)^2)."""
    return lsgan_loss(pred_fake, True)


def multilayer_nce(feat_q: Sequence[torch.Tensor], feat_k: Sequence[torch.Tensor], tau: float = 0.07) -> torch.Tensor:
    """Mean of `patch_nce_loss` over the encoder layers (CUT: total_nce_loss / n_layers)."""
    if len(feat_q) != len(feat_k) or not feat_q:
        raise ShiftkitError(f"need the same non-zero number of query and key layers, got {len(feat_q)} and {len(feat_k)}")
    return sum(patch_nce_loss(q, k, tau) for q, k in zip(feat_q, feat_k, strict=True)) / len(feat_q)


@dataclass
class CUTSettings:
    """Every knob of the recipe; `preset` sets the CUT / FastCUT defaults of the paper."""

    preset: str = "cut"
    lambda_gan: float = 1.0
    lambda_nce: float | None = None  # None: 1 (cut) or 10 (fastcut)
    nce_idt: bool | None = None  # None: True (cut) or False (fastcut)
    flip_equivariance: bool | None = None  # None: False (cut) or True (fastcut)
    nce_layers: list[int] | None = None  # None: CUT's 0,4,8,12,16 clipped to the encoder
    num_patches: int = 256
    tau: float = 0.07
    nc: int = 256
    ngf: int = 16
    n_blocks: int = 6
    ndf: int = 32
    d_layers: int = 3
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ShiftkitError(f"unknown preset {self.preset!r}", None, f"use one of {', '.join(PRESETS)}")
        fast = self.preset == "fastcut"
        if self.lambda_nce is None:
            self.lambda_nce = 10.0 if fast else 1.0
        if self.nce_idt is None:
            self.nce_idt = not fast
        if self.flip_equivariance is None:
            self.flip_equivariance = fast
        for name in ("lambda_gan", "lambda_nce"):
            if float(getattr(self, name)) < 0:
                raise ShiftkitError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_patches", "nc", "ngf", "n_blocks", "ndf", "d_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ShiftkitError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not self.tau > 0 or not self.lr > 0:
            raise ShiftkitError(f"tau and lr must be > 0, got {self.tau}, {self.lr}")

    def as_dict(self) -> dict:
        return asdict(self)


class CUT(nn.Module):
    """G, D and F of CUT with the per-step losses; `channels` is the image channel count (1 or 3)."""

    def __init__(self, channels: int, settings: CUTSettings | None = None):
        super().__init__()
        self.settings = s = settings or CUTSettings()
        self.G = ResnetGenerator(channels, channels, ngf=s.ngf, n_blocks=s.n_blocks)
        self.D = PatchDiscriminator(channels, ndf=s.ndf, n_layers=s.d_layers)
        self.nce_layers = self.G.check_layers(s.nce_layers if s.nce_layers is not None else self.G.default_nce_layers())
        s.nce_layers = list(self.nce_layers)
        self.F = PatchSampleMLP(self.G.layer_channels(self.nce_layers), nc=s.nc)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        s = self.settings
        betas = (s.beta1, s.beta2)
        return {"D": torch.optim.Adam(self.D.parameters(), lr=s.lr, betas=betas),
                "G": torch.optim.Adam(list(self.G.parameters()) + list(self.F.parameters()), lr=s.lr, betas=betas)}

    def nce(self, src: torch.Tensor, tgt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Multilayer PatchNCE between G's encoding of `src` (keys) and of its translation `tgt` (queries)."""
        s = self.settings
        feat_q = self.G.encode(tgt, self.nce_layers)
        feat_k = self.G.encode(src, self.nce_layers)
        ids = PatchSampleMLP.sample_ids(feat_k, s.num_patches, generator)
        return multilayer_nce(self.F(feat_q, ids), self.F(feat_k, ids), s.tau)

    def phases(self, real_a: torch.Tensor, real_b: torch.Tensor, generator: torch.Generator | None = None,
               autocast=None) -> tuple[list[Phase], dict[str, torch.Tensor]]:
        """The two phases of one step, in CUT's order: D on (real B, G(A) detached), then G + F.

        Returns (phases, tensors) where tensors holds `fake_b` (for sample grids). `generator`
        drives the random choices (patch locations, flips) so a step is a pure function of its
        inputs and seed; `autocast` is a context-manager factory (mixed precision) or None.
        """
        s = self.settings
        ctx = autocast or _null
        n = real_a.shape[0]
        with ctx():
            real = torch.cat([real_a, real_b]) if s.nce_idt else real_a
            fake = self.G(real)
        fake_b = fake[:n]
        idt_b = fake[n:] if s.nce_idt else None
        flip = bool(s.flip_equivariance and torch.rand((), generator=generator).item() < 0.5)

        def d_losses() -> dict[str, torch.Tensor]:
            with ctx():
                loss = discriminator_loss(self.D(real_b), self.D(fake_b.detach()))
            return {"D": loss}

        def g_losses() -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            with ctx():
                if s.lambda_gan > 0:
                    out["G_GAN"] = s.lambda_gan * generator_gan_loss(self.D(fake_b))
                if s.lambda_nce > 0:
                    src, tgt = (real_a.flip(-1), fake_b.flip(-1)) if flip else (real_a, fake_b)
                    out["NCE"] = s.lambda_nce * self.nce(src, tgt, generator)
                    if s.nce_idt:
                        out["NCE_Y"] = s.lambda_nce * self.nce(real_b, idt_b, generator)
            if "NCE_Y" in out:  # CUT averages the two NCE terms: (NCE_X + NCE_Y) / 2
                out["NCE"] = 0.5 * out["NCE"]
                out["NCE_Y"] = 0.5 * out["NCE_Y"]
            return out

        return [Phase(d_losses, groups=("D",)), Phase(g_losses, groups=("G",))], {"fake_b": fake_b}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
