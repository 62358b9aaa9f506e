"""Checkpoints: weights in safetensors (no pickle), training state in a tensors-only .pt.

`<name>.safetensors` holds `model.*` (the classifier), `<module>.*` (a method's extra modules,
e.g. `discriminator.*`) and `method.*` (method state), with metadata:
  shiftkit_model  JSON: {"spec": build_model spec, "classes": [...], "input_size": [h, w],
                          "in_channels": c, "normalization": {...}, "task": "classification"}
  shiftkit_meta   JSON: epoch, step, metrics at save time, method name...
`last.pt` holds optimiser / scheduler / scaler / RNG states and the data position; it is read
with `torch.load(weights_only=True)`, so it can hold tensors, numbers, strings, lists, dicts only.
`last.json` is a readable summary (epoch, step, files). All writes are atomic.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.io import atomic_write_bytes, atomic_write_json


def _tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}


def save_weights(
    path: str | Path,
    model: nn.Module,
    model_info: dict[str, Any],
    modules: dict[str, nn.Module] | None = None,
    method_state: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    from safetensors.torch import save

    tensors = _tensors("model", model.state_dict())
    for name, m in (modules or {}).items():
        tensors.update(_tensors(name, m.state_dict()))
    tensors.update(_tensors("method", method_state or {}))
    metadata = {"shiftkit_model": json.dumps(model_info, default=str), "shiftkit_meta": json.dumps(meta or {}, default=str),
                "format": "pt"}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return Path(path)


def read_weights(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """-> ({prefix: state_dict}, model_info, meta). Prefixes: "model", module names, "method"."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ShiftkitError("checkpoint not found", path, "pass a .safetensors file from a run folder's checkpoints/")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            md = fh.metadata() or {}
            groups: dict[str, dict[str, torch.Tensor]] = {}
            for key in fh.keys():
                prefix, _, rest = key.partition(".")
                groups.setdefault(prefix, {})[rest] = fh.get_tensor(key)
    except ShiftkitError:
        raise
    except Exception as exc:
        raise ShiftkitError(f"not a readable safetensors checkpoint ({exc})", path, "pass a shiftkit checkpoint") from None
    if "shiftkit_model" not in md:
        raise ShiftkitError("no shiftkit model spec in this checkpoint", path, "pass a checkpoint written by `shiftkit train`")
    return groups, json.loads(md["shiftkit_model"]), json.loads(md.get("shiftkit_meta", "{}"))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild the model of a checkpoint from its spec and load its weights (strict)."""
    from shiftkit.models import build_model

    groups, info, meta = read_weights(path)
    model = build_model(info["spec"])
    missing, unexpected = model.load_state_dict(groups.get("model", {}), strict=False)
    if missing or unexpected:
        raise ShiftkitError(
            f"checkpoint does not fit its architecture (missing {missing[:3]}, unexpected {unexpected[:3]})",
            path, "the file is from another shiftkit version or was edited",
        )
    model.to(device).eval()
    return model, info, meta


# -- training state -----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached": float(np_state[4]),
        "python": list(random.getstate()[1]),
        "python_version": int(random.getstate()[0]),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ShiftkitError(f"cannot read training state ({exc})", path, "delete the run folder's checkpoints/ to start over") from None


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_json(path, summary)


def exists(ckpt_dir: str | os.PathLike) -> bool:
    d = Path(ckpt_dir)
    return (d / "last.json").is_file() and (d / "last.pt").is_file() and (d / "last.safetensors").is_file()
