"""Thin classes around `shiftkit.transfer.functional`: a name, parameters, and set statistics.

A method is called as `method(src, tgt)` on float (B, C, H, W) batches in [0, 1]. Methods that
style each source image with one target image (`pairs = True`) need `tgt`; methods that use the
statistics of whole sets are fed first, batch by batch, with `fit_target(batch)` (and
`fit_source(batch)` when `needs_source_stats`), so a set is never held in memory.

Set statistics are kept for both channel counts (1 and 3) of every batch seen, so a gray source
uses the target set's luminance statistics and an RGB source its colour ones (see the channel
policy in `functional`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from shiftkit.transfer import functional as TF

REFERENCES = ("image", "set")


class TransferMethod:
    """Base class: `pairs` (needs one target image per source), set-statistics hooks, `params()`."""

    name = "base"
    pairs = True
    needs_target_stats = False
    needs_source_stats = False

    def __call__(self, src: torch.Tensor, tgt: torch.Tensor | None = None) -> torch.Tensor:
        TF.check_images(src, "source")
        if self.pairs:
            if tgt is None:
                raise ValueError(f"{self.name} styles each source image with a target image: pass `tgt`")
            TF.prepare_target(src, tgt)  # validates batch size, dtype and shape up front
        return self.apply(src, tgt)

    def apply(self, src: torch.Tensor, tgt: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def apply_pairs(self, src: torch.Tensor, targets: list[torch.Tensor] | None) -> torch.Tensor:
        """Style each source image with its own target image given as a list of (C, h, w) or
        (1, C, h, w) tensors of any sizes (the streaming pipeline's case). The default resizes each
        target to the source size and stacks them; statistic-based methods override this to take
        statistics at the target's native size."""
        if not self.pairs:
            return self(src)
        tgt = self._stack(src, targets, resize=True)
        return self.apply(src, tgt)

    @staticmethod
    def _targets(src: torch.Tensor, targets) -> list[torch.Tensor]:
        if targets is None or len(targets) != src.shape[0]:
            n = "no" if targets is None else len(targets)
            raise ValueError(f"got {n} target images for {src.shape[0]} source images: give one per source image")
        out = []
        for t in targets:
            t = t.unsqueeze(0) if t.ndim == 3 else t
            TF.check_images(t, "target")
            out.append(TF.match_channels(t.to(device=src.device, dtype=src.dtype), src.shape[1]))
        return out

    def _stack(self, src, targets, resize: bool) -> torch.Tensor:
        ts = self._targets(src, targets)
        size = (src.shape[-2], src.shape[-1])
        return torch.cat([TF.resize_to(t, size) if resize else t for t in ts])

    # A paired target that is used only through small statistics (`summarizes_targets`) is
    # summarised once per target image, so the pipeline never decodes it again per source image.
    summarizes_targets = False

    def target_summary(self, tgt: torch.Tensor) -> dict:
        """Small statistics of one target image (1, C, h, w) float, for both channel counts {1: ..., 3: ...}."""
        raise NotImplementedError(f"{self.name} uses target images, not summaries")

    def target_summaries(self, tgt: torch.Tensor) -> list[dict]:
        """`target_summary` of every image of a same-size batch (B, C, h, w), batched where the method can."""
        return [self.target_summary(tgt[k : k + 1]) for k in range(tgt.shape[0])]

    def apply_summaries(self, src: torch.Tensor, summaries: list[dict]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"{self.name} uses target images, not summaries")

    def apply_uint8(self, src: torch.Tensor, targets: list[torch.Tensor] | None = None, summaries: list[dict] | None = None,
                    target_keys: list | None = None) -> torch.Tensor:
        """The streaming pipeline's entry: uint8 (B, C, H, W) in, uint8 out (rounded), with either
        paired target images (uint8 (C, h, w) tensors) or their `target_summary`s. `target_keys`
        (one hashable id per target, e.g. its index in the target set) lets a method reuse work
        done on a target it has seen before."""
        TF.check_uint8_images(src, "source")
        x = src.float().div_(255.0)
        if summaries is not None:
            y = self.apply_summaries(x, summaries)
        else:
            ts = None if targets is None else [t.float().div(255.0) if t.dtype == torch.uint8 else t for t in targets]
            y = self.apply_pairs(x, ts)
        return TF.to_levels(y)

    _CACHE_SIZE = 4096  # keyed per-target results kept (LRU)

    def _per_target(self, key, compute: Callable[[], Any]) -> Any:
        """`compute()` for one paired target, memoised under `key` when the caller gave one."""
        if key is None:
            return compute()
        cache = self.__dict__.setdefault("_target_cache", OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = compute()
        if len(cache) > self._CACHE_SIZE:
            cache.popitem(last=False)
        return value

    def _per_targets(self, targets: list[torch.Tensor], keys: list | None, tag: tuple, compute: Callable[[torch.Tensor], Any]) -> list:
        """`compute(t)` for each paired target, memoised under (*tag, key) where the caller gave keys."""
        keys = list(keys) if keys is not None else [None] * len(targets)
        return [self._per_target(None if key is None else (*tag, key), lambda t=t: compute(t)) for t, key in zip(targets, keys, strict=True)]

    def fit_target(self, batch: torch.Tensor) -> None:
        """Accumulate target-set statistics from one batch (no-op for purely paired methods)."""

    def fit_source(self, batch: torch.Tensor) -> None:
        """Accumulate source-set statistics from one batch (only `pca` needs them)."""

    def params(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        """Fitted statistics worth recording in the provenance (small)."""
        return {}


class FDA(TransferMethod):
    """Fourier domain adaptation: the target image's low-frequency amplitude (square of half-size
    floor(min(H, W) * beta)) on the source's phase. See `functional.fda`."""

    name = "fda"

    def __init__(self, beta: float = 0.01):
        TF.fda_window(8, 8, beta)  # validates beta now, not in the middle of a run
        self.beta = float(beta)

    def apply(self, src, tgt):
        return TF.fda(src, tgt, self.beta)

    def params(self):
        return {"beta": self.beta}

    def apply_uint8(self, src, targets=None, summaries=None, target_keys=None):
        """uint8 in and out with the window computed in the pixels' own scale (FDA is linear in it),
        so no [0, 1] copies; each keyed target's window amplitude is computed once per source size."""
        TF.check_uint8_images(src, "source")
        (h, w), c = src.shape[-2:], src.shape[1]
        b = TF.fda_half_size(h, w, self.beta)
        if b < 0:
            return src.clone()
        if b > 8:  # large windows: full FFTs are cheaper
            return super().apply_uint8(src, targets)
        if targets is None or len(targets) != src.shape[0]:
            raise ValueError(f"fda styles each source image with a target image: got {0 if targets is None else len(targets)} for {src.shape[0]}")
        def amplitude(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(1, *t.shape[-3:]).to(src.device)
            t = TF.match_channels(t.float() * (1.0 if t.dtype == torch.uint8 else 255.0), c)
            return TF.fda_window_amplitude(TF.resize_to(t, (h, w)), b)

        amps = self._per_targets(targets, target_keys, ("fda", h, w, c, src.device), amplitude)
        y = TF.fda_with_amplitude(src.float(), torch.cat(amps), b)
        return y.clamp_(0, 255).round_().to(torch.uint8)


class _SetStats:
    """Streaming sums per channel count (1, 3) of some per-batch statistic."""

    def __init__(self):
        self.sums: dict[int, Any] = {}
        self.counts: dict[int, int] = {1: 0, 3: 0}

    def add(self, c: int, value, count: int) -> None:
        self.sums[c] = value if c not in self.sums else _add(self.sums[c], value)
        self.counts[c] += count

    def get(self, c: int, what: str):
        if self.counts.get(c, 0) == 0:
            raise ValueError(f"no {what} statistics were fitted: call fit_target/fit_source on at least one batch first")
        return self.sums[c], self.counts[c]


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b, strict=True))
    return a + b


class _ReferenceMethod(TransferMethod):
    """A method styled either by each source's paired target image (`reference="image"`) or by
    statistics pooled over the whole target set (`reference="set"`, gathered by `fit_target`)."""

    def __init__(self, reference: str = "image"):
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.reference = reference
        self.pairs = reference == "image"
        self.needs_target_stats = reference == "set"


class HistogramMatching(_ReferenceMethod):
    """Per-channel histogram matching, to the paired target image (`reference="image"`) or to the
    target set's mean histogram (`reference="set"`). See `functional.histogram_match`."""

    name = "histogram"

    def __init__(self, reference: str = "image"):
        super().__init__(reference)
        self._hist = _SetStats()

    def fit_target(self, batch):
        if self.reference != "set":
            return
        TF.check_images(batch, "target")
        for c in (1, 3):
            self._hist.add(c, TF.histograms(TF.match_channels(batch, c)).sum(0).cpu(), batch.shape[0])

    def set_histogram(self, channels: int) -> torch.Tensor:
        total, n = self._hist.get(channels, "target histogram")
        return total / n

    def apply(self, src, tgt):
        if self.reference == "image":
            return TF.histogram_match_images(src, tgt)
        return TF.histogram_match(src, self.set_histogram(src.shape[1]))

    def apply_pairs(self, src, targets):
        if self.reference == "set":
            return self(src)
        hists = torch.cat([TF.histograms(t) for t in self._targets(src, targets)])
        return TF.histogram_match(src, hists)

    summarizes_targets = True

    def target_summary(self, tgt):
        return self.target_summaries(tgt[:1])[0]

    def target_summaries(self, tgt):
        TF.check_images(tgt, "target")
        h = {c: TF.histograms(TF.match_channels(tgt, c)).cpu() for c in (1, 3)}
        return [{c: h[c][k] for c in (1, 3)} for k in range(tgt.shape[0])]

    def apply_summaries(self, src, summaries):
        return TF.histogram_match(src, self._stack_summaries(src, summaries))

    def _stack_summaries(self, src, summaries):
        if len(summaries) != src.shape[0]:
            raise ValueError(f"got {len(summaries)} target summaries for {src.shape[0]} source images")
        return torch.stack([s[src.shape[1]] for s in summaries]).to(src.device)

    def apply_uint8(self, src, targets=None, summaries=None, target_keys=None):
        """Stays in uint8 end to end (no float copy of the pixels): histogram matching only needs levels."""
        TF.check_uint8_images(src, "source")
        if self.reference == "set":
            return TF.histogram_match_uint8(src, self.set_histogram(src.shape[1]))
        if summaries is None:
            if targets is None or len(targets) != src.shape[0]:
                raise ValueError("histogram matching to images needs one target (or summary) per source image")
            return TF.histogram_match_uint8(src, self._target_hists(targets, src.shape[1], target_keys).to(src.device))
        return TF.histogram_match_uint8(src, self._stack_summaries(src, summaries))

    def _target_hists(self, targets: list[torch.Tensor], channels: int, keys: list | None = None) -> torch.Tensor:
        """Histograms (N, channels, 256) of paired targets (C, h, w), straight from uint8 where the
        channels allow (gray -> RGB replicates, so one gray histogram serves all three channels);
        a keyed target's histogram is computed once."""
        def one(t: torch.Tensor) -> np.ndarray:
            t = t.reshape(t.shape[-3:])
            if t.dtype == torch.uint8 and t.shape[0] in (channels, 1):
                h = np.empty((channels, 256), dtype=np.float64)
                TF.histogram_uint8_into(t.cpu(), h[: t.shape[0]])
                h[t.shape[0]:] = h[0]
                return h
            # an RGB target for a gray source (luminance), or a float target
            return self.target_summary((t.float() / 255.0 if t.dtype == torch.uint8 else t)[None])[channels].numpy()

        return torch.from_numpy(np.stack(self._per_targets(targets, keys, ("histogram", channels), one)))

    def params(self):
        return {"reference": self.reference}


class ColorStats(_ReferenceMethod):
    """Reinhard colour transfer of per-channel mean/std in CIE Lab, to the paired target image or
    to the target set's pooled Lab mean/std. See `functional.color_stats`."""

    name = "color-stats"

    def __init__(self, reference: str = "image"):
        super().__init__(reference)
        self._lab = _SetStats()

    def fit_target(self, batch):
        if self.reference != "set":
            return
        TF.check_images(batch, "target")
        for c in (1, 3):
            lab = TF._lab(TF.match_channels(batch, c)).detach().to(torch.float64)
            p = lab.transpose(0, 1).reshape(3, -1)
            self._lab.add(c, (p.sum(1).cpu(), (p * p).sum(1).cpu()), p.shape[1])

    def set_stats(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        (s, ss), n = self._lab.get(channels, "target Lab")
        mean = s / n
        std = (ss / n - mean * mean).clamp_min(0).sqrt()
        return mean, std

    def apply(self, src, tgt):
        if self.reference == "image":
            return TF.color_stats_images(src, tgt)
        m, s = self.set_stats(src.shape[1])
        return TF.color_stats(src, m, s)

    def apply_pairs(self, src, targets):
        if self.reference == "set":
            return self(src)
        stats = [TF.lab_stats(t) for t in self._targets(src, targets)]
        return TF.color_stats(src, torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats]))

    summarizes_targets = True

    def target_summary(self, tgt):
        return self.target_summaries(tgt[:1])[0]

    def target_summaries(self, tgt):
        TF.check_images(tgt, "target")
        stats = {c: tuple(v.cpu() for v in TF.lab_stats(TF.match_channels(tgt, c))) for c in (1, 3)}
        return [{c: (stats[c][0][k], stats[c][1][k]) for c in (1, 3)} for k in range(tgt.shape[0])]

    def apply_summaries(self, src, summaries):
        if self.reference == "set":
            return self(src)
        if len(summaries) != src.shape[0]:
            raise ValueError(f"got {len(summaries)} target summaries for {src.shape[0]} source images")
        c = src.shape[1]
        m = torch.stack([s[c][0] for s in summaries]).to(src.device, src.dtype)
        sd = torch.stack([s[c][1] for s in summaries]).to(src.device, src.dtype)
        return TF.color_stats(src, m, sd)

    def params(self):
        return {"reference": self.reference}

    def summary(self):
        if self.reference != "set" or self._lab.counts[3] == 0:
            return {}
        m, s = self.set_stats(3)
        return {"target_lab_mean": m.tolist(), "target_lab_std": s.tolist()}


class PCATransfer(TransferMethod):
    """Pixel-distribution adaptation: source pixel colours whitened with the source set's
    covariance and coloured with the target set's (x' = S_t^1/2 S_s^-1/2 (x - m_s) + m_t).
    See `functional.pca_transfer`."""

    name = "pca"
    pairs = False
    needs_target_stats = True
    needs_source_stats = True

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)
        self._tgt = _SetStats()
        self._src = _SetStats()
        self._cache: dict[int, tuple] = {}

    def _fit(self, acc: _SetStats, batch: torch.Tensor, name: str) -> None:
        TF.check_images(batch, name)
        self._cache.clear()
        for c in (1, 3):
            n, s, ss = TF.pixel_moments(TF.match_channels(batch, c))
            acc.add(c, (s.cpu(), ss.cpu()), n)

    def fit_target(self, batch):
        self._fit(self._tgt, batch, "target")

    def fit_source(self, batch):
        self._fit(self._src, batch, "source")

    def gaussians(self, channels: int):
        if channels not in self._cache:
            (s1, ss1), n1 = self._src.get(channels, "source pixel")
            (s2, ss2), n2 = self._tgt.get(channels, "target pixel")
            self._cache[channels] = TF.moments_to_gaussian(n1, s1, ss1) + TF.moments_to_gaussian(n2, s2, ss2)
        return self._cache[channels]

    def apply(self, src, tgt=None):
        ms, cs, mt, ct = self.gaussians(src.shape[1])
        return TF.pca_transfer(src, ms, cs, mt, ct, eps=self.eps)

    def params(self):
        return {"eps": self.eps}

    def summary(self):
        if self._src.counts[3] == 0 or self._tgt.counts[3] == 0:
            return {}
        ms, cs, mt, ct = self.gaussians(3)
        return {"source_mean": ms.tolist(), "source_cov": cs.tolist(), "target_mean": mt.tolist(), "target_cov": ct.tolist()}


def _learned(translator=None, **kw) -> TransferMethod:
    """`learned`: a trained unpaired translator (`shiftkit.transfer.learned`), imported on use
    (it subclasses TransferMethod, so it cannot be imported at the top of this module)."""
    from shiftkit.transfer.learned import LearnedTranslation

    return LearnedTranslation(translator, **kw)


METHODS: dict[str, type[TransferMethod]] = {
    "fda": FDA,
    "histogram": HistogramMatching,
    "color-stats": ColorStats,
    "pca": PCATransfer,
    "learned": _learned,  # type: ignore[dict-item]  # a factory: needs the translator's path
}


def make_method(name: str, beta: float = 0.01, reference: str = "image", translator=None) -> TransferMethod:
    """Build a method by its CLI name with the options that apply to it."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if name == "learned":
        return _learned(translator)
    if name == "fda":
        return FDA(beta)
    if name in ("histogram", "color-stats"):
        return METHODS[name](reference)
    return PCATransfer()
