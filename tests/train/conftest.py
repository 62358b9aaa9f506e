"""Tiny synthetic ImageFolders written with PIL: two classes (bright left vs bright right half)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_folder(root: Path, n_per_class: int, seed: int, shift: float = 0.0, labeled: bool = True, size: int = 16,
                rgb: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["left", "right"]):
        d = root / name if labeled else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.normal(0.3 + shift, 0.15, (size, size))
            half = slice(0, size // 2) if c == 0 else slice(size // 2, size)
            img[:, half] += 0.4
            arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            if rgb:
                arr = np.stack([arr, arr, arr], axis=2)
            Image.fromarray(arr).save(d / f"{name}_{i:03d}.png")
    return root


@pytest.fixture
def tiny(tmp_path):
    return {
        "source": make_folder(tmp_path / "source", 24, 0),
        "target": make_folder(tmp_path / "target", 16, 1, shift=0.2, labeled=False),
        "target_test": make_folder(tmp_path / "target_test", 12, 2, shift=0.2),
        "root": tmp_path,
    }



@pytest.fixture
def fast():
    """Settings that keep a fit() on the tiny folders at a second or two."""
    return dict(backbone="small_cnn", size=16, batch_size=8, progress=False, log_every=1)
