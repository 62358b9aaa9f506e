import numpy as np
import pytest
from PIL import Image

from shiftkit.report.plots import bar_chart, overlaid_histograms


def test_overlaid_histograms_png(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fig" / "h.png"
    overlaid_histograms([rng.normal(size=50), np.r_[rng.normal(1, size=40), np.nan]], ["a", "b"], path, title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and 200 < im.size[0] < 600
    overlaid_histograms([np.ones(5), np.ones(3)], ["a", "b"], tmp_path / "const.png")  # constant: no crash
    with pytest.raises(ValueError):
        overlaid_histograms([np.ones(3)], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        overlaid_histograms([np.array([np.nan])], ["a"], tmp_path / "x.png")


def test_bar_chart_png(tmp_path):
    bar_chart([0.5, 0.93], ["properties", "pixels"], tmp_path / "b.png", reference=0.5, ylim=(0, 1))
    assert (tmp_path / "b.png").stat().st_size > 1000
    with pytest.raises(ValueError):
        bar_chart([1.0], ["a", "b"], tmp_path / "c.png")
