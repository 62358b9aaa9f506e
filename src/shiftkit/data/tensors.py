"""Conversions between the data layer's uint8 HxWxC arrays and float (B, C, H, W) tensors in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: list[np.ndarray] | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Stack same-size uint8 HxWxC images into a float (B, C, H, W) tensor in [0, 1] on `device`."""
    arr = np.stack(images) if isinstance(images, (list, tuple)) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(x: torch.Tensor) -> list[np.ndarray]:
    """Float (B, C, H, W) in [0, 1] -> list of uint8 HxWxC arrays (rounded, clipped)."""
    arr = (x.detach().clamp(0, 1) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]
