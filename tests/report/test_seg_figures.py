"""Segmentation figures: colours, overlays, entropy maps, grids written as PNG."""

import numpy as np
import pytest
import torch

from shiftkit.report.seg_figures import (
    colorize,
    entropy_image,
    overlay,
    palette,
    save_domain_grid,
    save_prediction_grid,
)


def test_colorize_and_ignore():
    pal = palette(3)
    m = np.array([[0, 1], [2, 255]])
    c = colorize(m, 3)
    assert c.shape == (2, 2, 3) and c.dtype == np.uint8
    assert (c[0, 1] == pal[1]).all() and (c[1, 0] == pal[2]).all() and (c[1, 1] == 0).all()
    with pytest.raises(ValueError):
        colorize(np.array([[5]]), 3)


def test_overlay_blends_foreground_only():
    img = np.full((2, 2, 3), 100, dtype=np.uint8)
    m = np.array([[0, 1], [1, 0]])
    out = overlay(img, m, 2, alpha=0.5)
    assert (out[0, 0] == 100).all()
    want = (0.5 * 100 + 0.5 * palette(2)[1].astype(np.float32) + 0.5).astype(np.uint8)
    assert (out[0, 1] == want).all()
    with pytest.raises(ValueError):
        overlay(img, np.zeros((3, 3), dtype=int), 2)


def test_entropy_image_dark_when_certain():
    p = torch.zeros(2, 1, 2)
    p[0, 0, 0] = 1.0  # certain pixel
    p[:, 0, 1] = 0.5  # uniform pixel
    e = entropy_image(p)
    assert e.shape == (1, 2, 3)
    assert e[0, 0].sum() < e[0, 1].sum()


def test_grids_written(tmp_path):
    imgs = [torch.rand(3, 8, 8) for _ in range(2)]
    probs = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    masks = [torch.randint(0, 3, (8, 8)) for _ in range(2)]
    p = save_prediction_grid(tmp_path / "g.png", imgs, probs, masks, row_labels=["a", "b"])
    from PIL import Image

    assert Image.open(p).size[0] > 4 * 64
    q = save_domain_grid(tmp_path / "d.png", {"source": (imgs, probs, masks), "target": (imgs, probs, None)}, 3)
    assert Image.open(q).size[1] > Image.open(p).size[1]
