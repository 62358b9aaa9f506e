import numpy as np
import pytest
from PIL import Image

from shiftkit.report.grid import make_grid, save_grid


def test_grid_layout_and_pixels():
    red = np.zeros((10, 20, 3), np.uint8)
    red[..., 0] = 255
    gray = np.full((8, 8), 100, np.uint8)
    g = make_grid([[red, gray], [gray, None]], titles=["a", "b"], row_labels=["r1", "r2"], cell=32, pad=4)
    head, foot = 14 + 4, 14
    assert g.shape == (head + 2 * (32 + foot + 4) + 4, 2 * (32 + 4) + 4, 3) and g.dtype == np.uint8
    # the wide red image is letterboxed: centre of the first cell is pure red, its top band empty
    y0, x0 = head + 4, 4
    assert tuple(g[y0 + 16, x0 + 16]) == (255, 0, 0)
    assert tuple(g[y0 + 1, x0 + 16]) == (235, 235, 235)
    # the gray image fills its cell and stays gray
    assert tuple(g[y0 + 16, x0 + 36 + 16]) == (100, 100, 100)


def test_grid_bad_arguments():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="titles"):
        make_grid([[img, img]], titles=["only one"])
    with pytest.raises(ValueError, match="uint8"):
        make_grid([[img.astype(np.float32)]])
    with pytest.raises(ValueError, match="at least one row"):
        make_grid([])


def test_save_grid_writes_png(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (12, 12, 1), dtype=np.uint8)
    p = save_grid(tmp_path / "f" / "grid.png", [[img, img, img]], titles=["source", "target", "result"], cell=24)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGB"
