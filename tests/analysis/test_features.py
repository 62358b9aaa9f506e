import numpy as np
import pytest

from shiftkit.analysis.features import backbone_features, backbone_gap
from shiftkit.data.sample import Sample
from shiftkit.errors import ShiftkitError

models = pytest.importorskip("shiftkit.models")


def _samples(n, lo, hi, seed):
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(lo, hi, (20, 20, 3), dtype=np.uint8), path=f"{seed}_{i}.png") for i in range(n)]


def test_backbone_hook_with_untrained_model():
    # random weights (no download): checks the plumbing, not ImageNet features
    model = models.create_backbone("mobilenet_v2", width_mult=0.25)
    a, b = _samples(10, 0, 256, 0), _samples(10, 200, 256, 1)
    f = backbone_features(a, model=model, size=32, progress=False, cache=False, device="cpu")
    assert f.shape == (10, model.out_channels) and np.isfinite(f).all()
    g = backbone_gap(a, b, model=model, size=32, folds=2, progress=False, cache=False, device="cpu")
    assert {"accuracy", "mmd2", "backbone", "size"} <= set(g) and 0.0 <= g["accuracy"] <= 1.0


def test_unknown_backbone():
    with pytest.raises(ShiftkitError, match="unknown backbone"):
        backbone_gap([], [], backbone="resnet9000")
