"""Tiny synthetic datasets on disk, written through the data layer's own writer (canonical files)."""

import numpy as np
import pytest

from shiftkit.data import Boxes, DatasetWriter, Sample


def _img(rng, h, w, c, lo=0, hi=256):
    return rng.integers(lo, hi, (h, w, c), dtype=np.uint8)


def make_classification(root, n=7, c=1, size=(24, 20), seed=0, suffix=".png"):
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, format="imagefolder", classes=["defective", "functional"]) as w:
        for i in range(n):
            w.write(Sample(_img(rng, *size, c, 40, 200), i % 2, f"img{i:02d}{suffix}"))
    return root


def make_target(root, n=5, c=3, size=(20, 28), seed=1):
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, format="folder") as w:
        for i in range(n):
            w.write(Sample(_img(rng, *size, c, 0, 120 + 20 * i), None, f"t{i}.png"))
    return root


def make_segmentation(root, n=4, seed=2):
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, format="segmentation", classes=["bg", "crack"]) as w:
        for i in range(n):
            mask = np.zeros((16, 16), np.uint8)
            mask[2 + i : 8 + i, 3:9] = 1
            mask[0, :] = 255
            w.write(Sample(_img(rng, 16, 16, 3), mask, f"s{i}.png"))
    return root


def make_detection(root, fmt, n=4, seed=3):
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, format=fmt, classes=["cell", "crack"]) as w:
        for i in range(n):
            boxes = Boxes(np.array([[1.5, 2.0, 10.0, 12.25], [3.0, 4.0, 7.0, 9.0]][: 1 + i % 2], np.float32), [i % 2, 1][: 1 + i % 2])
            w.write(Sample(_img(rng, 18, 22, 3), boxes, f"d{i}.jpg" if fmt == "coco" else f"d{i}.png"))
    return root


@pytest.fixture
def make():
    """The builders above, as a fixture (test modules cannot import conftest under importlib mode)."""
    import types

    return types.SimpleNamespace(classification=make_classification, target=make_target,
                                 segmentation=make_segmentation, detection=make_detection)


@pytest.fixture
def datasets(tmp_path):
    return {
        "A": make_classification(tmp_path / "A"),
        "B": make_target(tmp_path / "B"),
        "tmp": tmp_path,
    }
