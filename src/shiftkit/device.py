"""Device choice shared by every command: `auto` picks CUDA when present, else CPU."""

from __future__ import annotations

import torch

from shiftkit.errors import ShiftkitError


def resolve_device(spec: str | None = "auto") -> torch.device:
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ShiftkitError(f"--device {spec} asked for, but CUDA is not available", None, "use --device cpu or auto")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ShiftkitError(f"unknown device {spec!r}", None, "use auto, cpu, cuda or cuda:N") from None
