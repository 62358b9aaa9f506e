"""The Method protocol: what a training recipe tells the engine, and nothing more.

The engine (shiftkit.train.engine) owns devices, the loop, optimisers, schedules, AMP, logging,
checkpoints, evaluation and selection. A method owns:
- `streams`: the batches it reads each step, ("source", "target") or ("target",) (source-free);
- `modules()`: extra nn.Modules it trains (a discriminator, ...), each its own parameter group;
- `phases(net, batch, step)`: a list of `Phase`s run in order. Each phase's losses are summed,
  back-propagated, and the optimisers of its `groups` step. A phase's `losses` may be a callable,
  evaluated only when the phase runs, so a second phase (a discriminator update) sees the
  parameters the first phase just updated (AdaptSegNet / AdvEnt / GANs);
- optional hooks: `setup(engine)` once before optimisers are built (create modules that need the
  feature size, freeze a head), `on_epoch_start(engine)` (recompute centroids / pseudo labels over
  the whole target set), `state_dict()` / `load_state_dict()` for tensors kept between steps.

`net(x)` returns `(features, logits)`: x is a float image batch in [0, 1] (the model normalises
it) or, when the backbone is frozen and features are cached, a (N, D) feature batch.
`batch[stream]` is a dict with "x" and, where known, "y" (int64, -1 = no label) and "index"
(position in that stream's dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Losses = dict[str, torch.Tensor]


@dataclass
class Phase:
    """One optimisation phase: named losses (already weighted; summed) and the groups they update."""

    losses: Losses | Callable[[], Losses]
    groups: tuple[str, ...] = ("model",)
    logs: dict[str, float] = field(default_factory=dict)  # diagnostics only, never summed

    def resolve(self) -> Losses:
        out = self.losses() if callable(self.losses) else self.losses
        if not out:
            raise ValueError("a phase returned no losses")
        return out


@dataclass
class StepInfo:
    """Where training stands: global step, epoch, total steps (for schedules such as DANN's lambda)."""

    step: int
    epoch: int
    total_steps: int
    device: torch.device = torch.device("cpu")

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


class Method:
    """Base class with the default hooks; subclasses set `name`, `streams` and define `phases`."""

    name: str = "method"
    streams: tuple[str, ...] = ("source", "target")
    uses_target_labels: bool = False

    def setup(self, engine: Any) -> None:
        """Called once with the engine (engine.feature_dim, engine.num_classes, engine.stream_size(name))."""

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def phases(self, net: nn.Module, batch: dict[str, dict[str, torch.Tensor]], step: StepInfo) -> list[Phase]:
        raise NotImplementedError

    def on_epoch_start(self, engine: Any) -> None:
        """Called before each epoch (after resume too)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)[:5]}")

    def config(self) -> dict[str, Any]:
        """Settings recorded in config.json."""
        return {"name": self.name}


class Term:
    """One additive component of a UDA objective (adversarial alignment, MCC, self-training...).

    Given the forward outputs on source and target it returns weighted named losses and logs.
    """

    name = "term"
    needs_views = False  # True: wants weak/strong target views (self-training)

    def setup(self, engine: Any) -> None:
        pass

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def losses(self, out: ForwardOut, step: StepInfo) -> tuple[Losses, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class ForwardOut:
    f_s: torch.Tensor
    z_s: torch.Tensor
    y_s: torch.Tensor
    f_t: torch.Tensor | None = None
    z_t: torch.Tensor | None = None
    z_t_strong: torch.Tensor | None = None
    index_t: torch.Tensor | None = None


class UDAMethod(Method):
    """Supervised loss on labeled source + a sum of `Term`s on (source, target).

    One forward pass over cat(source, target[, target_strong]) so BatchNorm sees both domains
    (as in DANN/CDAN/MCC reference code). L = CE_ls(z_s, y_s) [class weights] + sum_k L_k.
    With no terms and streams ("source",) this is plain supervised training (source-only).
    """

    def __init__(
        self,
        terms: list[Term] | None = None,
        name: str | None = None,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        source_only: bool = False,
        ignore_index: int = -100,
    ):
        self.terms = list(terms or [])
        self.name = name or ("+".join(t.name for t in self.terms) or "source-only")
        self.label_smoothing = float(label_smoothing)
        self.class_weights = class_weights
        self.ignore_index = int(ignore_index)
        self.streams = ("source",) if source_only or not self.terms else ("source", "target")

    def setup(self, engine: Any) -> None:
        for t in self.terms:
            t.setup(engine)

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for t in self.terms:
            for k, m in t.modules().items():
                if k in out:
                    raise ValueError(f"two terms both define the module {k!r}")
                out[k] = m
        return out

    def phases(self, net, batch, step):
        from shiftkit.adapt.losses import cross_entropy
        from shiftkit.adapt.views import strong_view, weak_view

        src = batch["source"]
        xs, ys = src["x"], src["y"]
        parts, tgt = [xs], batch.get("target")
        views = any(t.needs_views for t in self.terms)
        if tgt is not None and "target" in self.streams:
            xt = tgt["x"]
            if views:
                parts += [weak_view(xt), strong_view(xt)]
            else:
                parts.append(xt)
        f, z = net(torch.cat(parts) if len(parts) > 1 else xs)
        ns = xs.shape[0]
        out = ForwardOut(f_s=f[:ns], z_s=z[:ns], y_s=ys)
        if len(parts) > 1:
            nt = parts[1].shape[0]
            out.f_t, out.z_t = f[ns : ns + nt], z[ns : ns + nt]
            if views:
                out.z_t_strong = z[ns + nt :]
            out.index_t = tgt.get("index")
        w = self.class_weights.to(z.device) if self.class_weights is not None else None
        losses: Losses = {"cls": cross_entropy(out.z_s.float(), ys, label_smoothing=self.label_smoothing, weight=w,
                                                ignore_index=self.ignore_index)}
        logs: dict[str, float] = {}
        groups = ["model"]
        for t in self.terms:
            ls, lg = t.losses(out, step)
            for k, v in ls.items():
                if k in losses:
                    raise ValueError(f"loss name {k!r} used twice")
                losses[k] = v
            logs.update(lg)
            groups += [g for g in t.modules() if g not in groups]
        return [Phase(losses, tuple(groups), logs)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, t in enumerate(self.terms):
            for k, v in t.state_dict().items():
                out[f"{i}.{t.name}.{k}"] = v
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, t in enumerate(self.terms):
            prefix = f"{i}.{t.name}."
            t.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "streams": list(self.streams),
            "label_smoothing": self.label_smoothing,
            "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
            "terms": [t.config() for t in self.terms],
        }
