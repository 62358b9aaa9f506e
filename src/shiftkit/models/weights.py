"""Pretrained weights: a registry (name -> resource, arch, expected keys, input normalisation)
and a strict, safe loader.

Safety: `.pth` files are read with `torch.load(weights_only=True)`, which refuses any pickled
object other than tensors and plain containers (a file with a malicious `__reduce__` raises
instead of running code); `.safetensors` files hold no code at all.

Strictness: every key of the model must be in the file and vice versa (after dropping the
ImageNet classifier when the model was built without it), with equal shapes; otherwise a
`WeightsError` lists the first 10 missing / unexpected / mismatched keys and their counts.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftkit.errors import ResourceError
from shiftkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from shiftkit.resources import cached_path, fetch, get_resource

SHOW = 10  # keys listed per kind in a mismatch message


class WeightsError(ResourceError):
    """A weights file cannot be loaded into a model (unsafe, unreadable, or keys do not match)."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str  # registry name, e.g. "mobilenet_v2-imagenet"
    arch: str  # backbone name in shiftkit.models.backbones.BACKBONES (or an external arch)
    resource: str  # shiftkit.resources name (SHA-256, how to fetch)
    num_keys: int  # keys in the published state_dict
    sample_keys: tuple[str, ...]  # a few keys that must be present
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    num_classes: int
    head_prefix: str | None = None  # classifier keys dropped when the model has no top
    description: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return get_resource(self.resource).sha256

    def cached(self) -> Path | None:
        p = cached_path(self.resource)
        return p if p.is_file() else None

    def as_dict(self) -> dict[str, Any]:
        p = self.cached()
        return {
            "name": self.name, "arch": self.arch, "resource": self.resource,
            "package": get_resource(self.resource).package, "sha256": self.sha256,
            "num_keys": self.num_keys, "mean": list(self.mean), "std": list(self.std),
            "input_size": self.input_size, "num_classes": self.num_classes,
            "cached": p is not None, "path": str(p) if p else None,
            "size_bytes": p.stat().st_size if p else None, "description": self.description,
        }  # fmt: skip


_LITE_M, _LITE_S = 127.0 / 255.0, 128.0 / 255.0
WEIGHTS: dict[str, WeightsEntry] = {}


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    """Add an entry (other modules register their own pretrained files, e.g. digit models)."""
    get_resource(entry.resource)  # fail early on a typo
    WEIGHTS[entry.name] = entry
    return entry


register_weights(
    WeightsEntry(
        "mobilenet_v2-imagenet", "mobilenet_v2", "mobilenet_v2-imagenet", 314,
        ("features.0.0.weight", "features.18.1.running_var", "classifier.1.weight"),
        IMAGENET_MEAN, IMAGENET_STD, 224, 1000, "classifier.",
        "torchvision MobileNetV2 ImageNet-1k (71.9% top-1), 3.5 M params",
    )
)  # fmt: skip
register_weights(
    WeightsEntry(
        "efficientnet_lite0-imagenet", "efficientnet_lite0", "efficientnet_lite0-imagenet", 296,
        ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_fc.weight"),
        (_LITE_M,) * 3, (_LITE_S,) * 3, 224, 1000, "_fc.",
        "EfficientNet-Lite0 ImageNet-1k (official TF weights converted), 4.7 M params",
    )
)  # fmt: skip


def get_weights(name: str) -> WeightsEntry:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}", None, f"known: {', '.join(sorted(WEIGHTS))}, or a .pth/.safetensors path") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict safely from .safetensors or .pth/.pt (tensors only; never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("weights file not found", path, "pass an existing .pth or .safetensors file, or a registry name (shiftkit weights list)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"not a readable safetensors file ({exc})", path, "re-export it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text.lower():  # not a pickle of objects at all: bad bytes
            raise WeightsError(f"not a readable PyTorch weights file ({text.strip()[:200]})", path, "re-export it") from None
        detail = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), text.strip()[:200])
        raise WeightsError(
            f"refused to load: the file holds pickled objects other than tensors ({detail[:200]})",
            path,
            "only state_dicts of tensors are accepted; re-save with torch.save(model.state_dict()) or use .safetensors",
        ) from None
    except Exception as exc:
        raise WeightsError(f"not a readable PyTorch weights file ({type(exc).__name__}: {exc})", path, "re-export it") from None
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: object) -> dict[str, torch.Tensor]:
    # common containers: {"state_dict": sd}, {"model": sd}, DDP's "module." prefix
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"expected a state_dict (dict of tensors), got {type(obj).__name__}", path)
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise WeightsError("the file holds no tensors", path)
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _target(model: nn.Module) -> nn.Module:
    """Pretrained backbone weights load into `model.backbone` when the model wraps one."""
    from shiftkit.models.backbones import Backbone

    if not isinstance(model, Backbone) and isinstance(getattr(model, "backbone", None), Backbone):
        return model.backbone
    return model


def _listing(kind: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return f"{len(keys)} {kind}: {', '.join(keys[:SHOW])}{more}"


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], source: object = None, head_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Return `state` ready for strict loading into `model`, or raise WeightsError listing the differences."""
    own = model.state_dict()
    if head_prefix and not any(k.startswith(head_prefix) for k in own):
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [_listing(kind, keys) for kind, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatches (file vs model)", shapes)) if keys]
        raise WeightsError(
            f"weights do not match {type(model).__name__}: " + "; ".join(parts),
            source,
            "check the architecture (--backbone) and its options against the weights (shiftkit weights list)",
        )
    return state


def load_pretrained(model: nn.Module, name_or_path: str | os.PathLike, local_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load registry weights (by name) or a local file into `model` (or `model.backbone`), strictly.

    `local_path` replaces the download for a registry name (still SHA-256 verified).
    Returns {"name", "path", "num_keys"} for provenance (config.json).
    """
    target = _target(model)
    name = str(name_or_path)
    entry = WEIGHTS.get(name)
    if entry is not None:
        arch = getattr(target, "name", None)
        if arch is not None and arch != entry.arch:
            raise WeightsError(f"weights {entry.name} are for {entry.arch}, not {arch}", None, "pick matching --backbone and weights")
        path = fetch(entry.resource, local_path, quiet=False)
        head_prefix = entry.head_prefix
    else:
        path = Path(name)
        if not path.exists():
            get_weights(name)  # raises "unknown weights ..." with the known names
        head_prefix = getattr(target, "head_prefix", None)
    state = read_state_dict(path)
    if entry is not None:
        absent = [k for k in entry.sample_keys if k not in state]
        if len(state) != entry.num_keys or absent:
            raise WeightsError(
                f"{entry.name}: file has {len(state)} keys (expected {entry.num_keys})"
                + (f", lacks {', '.join(absent)}" if absent else ""),
                path,
                "the file is not the registered release",
            )
    state = check_keys(target, state, path, head_prefix)
    target.load_state_dict(state, strict=True)
    return {"name": entry.name if entry else None, "path": str(path), "num_keys": len(state)}
