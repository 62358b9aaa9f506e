"""Device choice shared by every command: `auto` picks CUDA when present, else CPU; autocast dtypes;
and CPU inference in cache-sized chunks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

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


# Pixels per inference chunk on CPU. Measured on this project's 2-core CPU (benchmarks/inference_chunks.py):
# MobileNetV2, DeepLab and U-Net forwards run fastest with about 130k-260k input pixels per call, where
# the activations stay in cache; a 128-image batch of 160 px cells is about 4x slower per image.
CPU_CHUNK_PIXELS = 196_608


def cpu_chunk_pixels() -> int:
    """The CPU chunk budget; SHIFTKIT_CPU_CHUNK_PIXELS overrides it for a CPU with other caches."""
    raw = os.environ.get("SHIFTKIT_CPU_CHUNK_PIXELS")
    if raw is None:
        return CPU_CHUNK_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ShiftkitError(f"SHIFTKIT_CPU_CHUNK_PIXELS must be a positive integer, got {raw!r}", None,
                            "unset it or give a pixel count such as 196608")
    return value


def forward_chunked(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
    """fn(x) for an inference-only forward (eval mode, no batch statistics), computed on CPU in chunks of
    about `cpu_chunk_pixels()` input pixels and concatenated: the same result, several times faster than
    one large batch. On CUDA the batch goes through whole. fn may return a tensor, or a tuple or list of
    tensors batched along dim 0."""
    if x.device.type != "cpu" or x.dim() < 3:
        return fn(x)
    step = max(1, cpu_chunk_pixels() // (int(x.shape[-1]) * int(x.shape[-2])))
    if len(x) <= step:
        return fn(x)
    outs = [fn(x[i:i + step]) for i in range(0, len(x), step)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    if isinstance(outs[0], (tuple, list)):
        return type(outs[0])(torch.cat(parts) for parts in zip(*outs, strict=True))
    raise TypeError(f"forward_chunked: fn returned {type(outs[0]).__name__}; expected a tensor, tuple or list of tensors")
