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


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `--amp` on `device`, or None for full float32.

    auto: float16 on CUDA (with a gradient scaler), float32 on CPU, so CPU results stay bit-stable.
    on: the same on CUDA; on CPU bfloat16, which runs the convolutions on AMX/AVX-512-BF16 units
    where the processor has them (about 3x a float32 step for the digit CNNs on such a core).
    off: float32 everywhere."""
    if mode not in ("auto", "on", "off"):
        raise ShiftkitError(f"amp must be auto, on or off, got {mode!r}", None, "use auto, on or off")
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if mode == "on" and device.type == "cpu" else None


def amp_label(dtype: torch.dtype | None) -> str | bool:
    """How run folders record an `amp_dtype` result: "bfloat16" / "float16", or False for float32."""
    return str(dtype).replace("torch.", "") if dtype is not None else False
