"""Networks of the contrastive unpaired translator (CUT, Park et al., ECCV 2020), plain PyTorch.

- `ResnetGenerator`: the ResNet-block generator of CycleGAN/CUT as one flat `nn.Sequential`
  (so that "layer k" means the same as in CUT's `--nce_layers 0,4,8,12,16`):
      0 ReflectionPad(3)  1 Conv7x7(in, ngf)  2 IN  3 ReLU
      4 Conv3x3(ngf, 2ngf)  5 IN  6 ReLU  7 BlurDown x2          (antialiased downsampling)
      8 Conv3x3(2ngf, 4ngf)  9 IN  10 ReLU  11 BlurDown x2
      12 .. 12+n-1  ResnetBlock(4ngf)                          (the encoder ends here)
      then per level: Upsample x2 (bilinear) + Conv3x3 + IN + ReLU, and ReflectionPad(3) + Conv7x7 + Sigmoid.
  Output in [0, 1] (the image convention of shiftkit) instead of CUT's tanh in [-1, 1];
  the input is mapped to [-1, 1] inside. It is fully convolutional and keeps H, W
  (multiples of 4; `translate` pads other sizes by reflection and crops back).
- `PatchDiscriminator`: the 70x70 PatchGAN (Isola et al. 2017): 4x4 convs, stride 2, LeakyReLU(0.2),
  instance norm, one logit per overlapping patch.
- `PatchSampleMLP`: CUT's PatchSampleF: per encoder layer, pick the same random locations in the
  two feature maps, project each location with a 2-layer MLP (C -> nc -> nc) and L2-normalise.
  The MLPs are built up front from the generator's channel counts (CUT builds them lazily on
  the first batch), so the optimiser and checkpoints see every parameter from step 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shiftkit.errors import ShiftkitError

ARCH = "cut-resnet"


def _check_int(name: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ShiftkitError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class BlurDownsample(nn.Module):
    """Antialiased x2 downsampling (Zhang, ICML 2019; CUT's default): reflect-pad, blur with the
    binomial filter [1, 2, 1] x [1, 2, 1] / 16 per channel, keep every other pixel."""

    def __init__(self, channels: int):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        k = (f[:, None] * f[None, :]) / 16.0
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling (a fixed linear filter, like CUT's antialiased upsampling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ResnetBlock(nn.Module):
    """x + IN(Conv3x3(ReLU(IN(Conv3x3(x))))) with reflection padding."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CUT's generator (see the module doc); `encode(x, layers)` returns the listed layers' outputs."""

    n_down = 2

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, ngf: int = 16, n_blocks: int = 6):
        super().__init__()
        _check_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else out_channels
        _check_int("out_channels", out_channels)
        _check_int("ngf", ngf)
        _check_int("n_blocks", n_blocks)
        if in_channels not in (1, 3) or out_channels not in (1, 3):
            raise ShiftkitError(f"channels must be 1 or 3, got in={in_channels} out={out_channels}")
        self.in_channels, self.out_channels, self.ngf, self.n_blocks = in_channels, out_channels, ngf, n_blocks
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        c = ngf
        for _ in range(self.n_down):
            layers += [nn.Conv2d(c, 2 * c, 3, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True), BlurDownsample(2 * c)]
            c *= 2
        layers += [ResnetBlock(c) for _ in range(n_blocks)]
        self.encoder_length = len(layers)  # layers [0, encoder_length) form the encoder
        for _ in range(self.n_down):
            layers += [Upsample2x(), nn.Conv2d(c, c // 2, 3, padding=1), nn.InstanceNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7)]
        self.model = nn.Sequential(*layers)

    @property
    def spec(self) -> dict:
        return {"arch": ARCH, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "ngf": self.ngf, "n_blocks": self.n_blocks}

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2**self.n_down

    def default_nce_layers(self) -> list[int]:
        """CUT's 0, 4, 8, 12, 16 clipped to this encoder (the last encoder layer stands in for missing ones)."""
        last = self.encoder_length - 1
        return sorted({min(k, last) for k in (0, 4, 8, 12, 16)})

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        layers = [int(k) for k in layers]
        if not layers:
            raise ShiftkitError("nce_layers is empty", None, "give encoder layer indices, e.g. 0,4,8,12,16")
        bad = [k for k in layers if not 0 <= k < self.encoder_length]
        if bad:
            raise ShiftkitError(f"nce_layers {bad} are outside the encoder (layers 0..{self.encoder_length - 1} "
                                f"with n_blocks={self.n_blocks})", None, "use smaller indices or more blocks")
        if len(set(layers)) != len(layers) or sorted(layers) != layers:
            raise ShiftkitError(f"nce_layers must be strictly increasing, got {layers}")
        return layers

    def layer_channels(self, layers: Sequence[int]) -> list[int]:
        """Channels of each listed encoder layer's output (a dry run on a tiny input)."""
        with torch.no_grad():
            p = next(self.parameters())
            feats = self.encode(torch.zeros(1, self.in_channels, 4 * self.multiple, 4 * self.multiple, device=p.device, dtype=p.dtype), layers)
        return [f.shape[1] for f in feats]

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShiftkitError(f"the generator expects (B, {self.in_channels}, H, W) images, got {tuple(x.shape)}")
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ShiftkitError(f"image size {tuple(x.shape[-2:])} is not a multiple of {self.multiple}",
                                None, "use `translate`, which pads by reflection")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> [0, 1] images of the same size."""
        self._check(x)
        return torch.sigmoid(self.model(x * 2.0 - 1.0))

    def encode(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of encoder layers `layers` for [0, 1] images (stops after the last one needed)."""
        self._check(x)
        want = set(layers)
        feats = []
        h = x * 2.0 - 1.0
        for k, layer in enumerate(self.model):
            h = layer(h)
            if k in want:
                feats.append(h)
            if k >= max(want):
                break
        return feats


class PatchDiscriminator(nn.Module):
    """PatchGAN: Conv4x4 s2 (ndf) + LReLU, then n_layers-1 x [Conv4x4 s2 + IN + LReLU] (channels x2,
    at most 8ndf), Conv4x4 s1 + IN + LReLU, Conv4x4 s1 -> 1 logit map. n_layers=3 sees 70x70 patches."""

    def __init__(self, in_channels: int = 3, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        _check_int("in_channels", in_channels)
        _check_int("ndf", ndf)
        _check_int("n_layers", n_layers)
        self.in_channels, self.ndf, self.n_layers = in_channels, ndf, n_layers
        seq: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    @property
    def spec(self) -> dict:
        return {"in_channels": self.in_channels, "ndf": self.ndf, "n_layers": self.n_layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShiftkitError(f"the discriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        need = 2 ** (self.n_layers + 1)
        if min(x.shape[-2:]) < need:
            raise ShiftkitError(f"discriminator input {tuple(x.shape[-2:])} is smaller than {need} px",
                                None, "train at a larger --size or with fewer discriminator layers")
        return self.model(x * 2.0 - 1.0)


class PatchSampleMLP(nn.Module):
    """CUT's PatchSampleF: per layer a 2-layer MLP head (C -> nc -> nc) on sampled locations, L2-normalised."""

    def __init__(self, channels: Sequence[int], nc: int = 256):
        super().__init__()
        _check_int("nc", nc)
        self.channels, self.nc = [int(c) for c in channels], nc
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in self.channels)

    @staticmethod
    def sample_ids(feats: Sequence[torch.Tensor], num_patches: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Random locations per layer (a permutation prefix of H*W; all of them when fewer)."""
        out = []
        for f in feats:
            hw = f.shape[2] * f.shape[3]
            perm = torch.randperm(hw, generator=generator)
            out.append(perm[: min(num_patches, hw)].to(f.device))
        return out

    def forward(self, feats: Sequence[torch.Tensor], ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """feats[l]: (B, C_l, H, W); ids[l]: (N_l,) flat locations -> list of (B, N_l, nc) unit vectors."""
        if len(feats) != len(self.mlps) or len(ids) != len(self.mlps):
            raise ShiftkitError(f"{len(feats)} feature maps / {len(ids)} id sets for {len(self.mlps)} MLP heads")
        out = []
        for f, i, mlp in zip(feats, ids, self.mlps, strict=True):
            b, c = f.shape[:2]
            x = f.flatten(2).transpose(1, 2)[:, i, :]  # (B, N, C)
            x = mlp(x)
            out.append(F.normalize(x, dim=-1, eps=1e-7))
        return out


def build_translator(spec: dict) -> ResnetGenerator:
    """Rebuild a generator from the `spec` recorded in its checkpoint."""
    spec = dict(spec)
    arch = spec.pop("arch", ARCH)
    if arch != ARCH:
        raise ShiftkitError(f"not a translator checkpoint (arch {arch!r})", None, "pass the run folder of `shiftkit translator train`")
    try:
        return ResnetGenerator(**spec)
    except TypeError as exc:
        raise ShiftkitError(f"bad translator spec {spec}: {exc}") from None


def translate(generator: ResnetGenerator, x: torch.Tensor, size: int | None = None, batch_size: int = 16) -> torch.Tensor:
    """Translate [0, 1] images (B, C, H, W) of any size; output keeps (H, W).

    With `size`, each image is resized so that its shorter side is `size` (the scale the
    translator learned), translated, and resized back; otherwise it runs at native size. Sides are
    reflect-padded to a multiple of 4 and cropped back, so geometry is untouched by the padding.
    Channels are matched to the generator (gray -> 3 by replication, RGB -> gray by ITU-R 601 luma).
    """
    if x.ndim != 4:
        raise ShiftkitError(f"translate expects (B, C, H, W), got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    c_in = generator.in_channels
    if x.shape[1] != c_in:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else (x * luma).sum(1, keepdim=True)
    h, w = H, W
    if size is not None:
        s = size / min(H, W)
        h, w = max(1, round(H * s)), max(1, round(W * s))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    m = generator.multiple
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if (h > ph and w > pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    p = next(generator.parameters())
    outs = []
    for k in range(0, x.shape[0], batch_size):
        outs.append(generator(x[k : k + batch_size].to(p.device, p.dtype)).to(x.dtype))
    y = torch.cat(outs)[..., :h, :w]
    if (h, w) != (H, W):
        y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False, antialias=(h > H)).clamp(0, 1)
    return y


def register() -> None:
    """Make `shiftkit.models.build_model({"arch": "cut-resnet", ...})` rebuild the generator."""
    from shiftkit.models import register_arch

    def _build(weights=None, **spec):
        if weights:
            raise ShiftkitError("the translator has no pretrained weights", None, "load a translator checkpoint instead")
        return build_translator({"arch": ARCH, **spec})

    register_arch(ARCH, _build)
