import math

import numpy as np
import pytest
from scipy import stats

from shiftkit.analysis import drift as D
from shiftkit.analysis.properties import PropertyTable
from shiftkit.data.sample import Sample
from shiftkit.errors import ShiftkitError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, 80)
    b = rng.normal(0.4, 1.3, 55)
    if seed == 2:  # ties across and within samples
        a, b = np.round(a), np.round(b)
    d, p = D.ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_ks_hand_computed_and_nans():
    # F_a jumps at 1, 2; F_b at 3, 4 -> sup |F_a - F_b| = 1
    assert D.ks_statistic([1, 2, np.nan], [3, 4]) == 1.0
    assert D.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    with pytest.raises(ShiftkitError):
        D.ks_statistic([np.nan], [1.0])


def test_histogram_overlap():
    assert D.histogram_overlap([0, 0, 1, 1], [0, 1, 1, 1], bins=2) == pytest.approx(0.75)
    assert D.histogram_overlap([0, 0.1], [5, 6], bins=8) == 0.0
    assert D.histogram_overlap([2, 2], [2, 2, 2]) == 1.0
    x = np.random.default_rng(0).random(100)
    assert D.histogram_overlap(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        D.histogram_overlap(x, x, bins=0)


def test_property_drift_sorted_and_skips_undefined():
    rng = np.random.default_rng(0)
    ta = PropertyTable([f"a{i}" for i in range(50)], {"x": rng.random(50), "y": rng.random(50), "object_area": np.full(50, np.nan)})
    tb = PropertyTable([f"b{i}" for i in range(40)], {"x": rng.random(40) + 0.8, "y": rng.random(40), "object_area": np.full(40, np.nan)})
    rows = D.property_drift(ta, tb)
    assert [r["property"] for r in rows] == ["x", "y"]
    assert rows[0]["ks"] > rows[1]["ks"] and rows[0]["n_a"] == 50 and rows[0]["n_b"] == 40


def test_mmd_hand_computed():
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [4.0]])
    k = lambda d: math.exp(-(d**2) / 2.0)  # bandwidth 1
    expected = k(1) + k(1) - 2 * (k(3) + k(4) + k(2) + k(3)) / 4
    got = D.mmd_rbf(x, y, bandwidth=1.0)
    assert got["mmd2"] == pytest.approx(expected)
    # median heuristic: pooled pairwise distances 1,3,4,2,3,1 -> median 2.5
    assert D.mmd_rbf(x, y)["bandwidth"] == pytest.approx(2.5)


def test_mmd_same_vs_different():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 5)), rng.normal(size=(150, 5))
    c = rng.normal(1.0, size=(150, 5))
    same, diff = D.mmd_rbf(a, b, n_permutations=50), D.mmd_rbf(a, c, n_permutations=50)
    assert abs(same["mmd2"]) < 0.02 and diff["mmd2"] > 0.1
    assert same["p_value"] > 0.05 and diff["p_value"] < 0.05
    with pytest.raises(ShiftkitError):
        D.mmd_rbf(a, c[:, :3])
    with pytest.raises(ShiftkitError):
        D.mmd_rbf(a[:1], c)


def test_domain_classifier_chance_and_separable():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    same = D.domain_classifier_accuracy(a, b, seed=0)
    assert 0.4 <= same["accuracy"] <= 0.6 and same["n_per_domain"] == 200 and len(same["fold_accuracies"]) == 5
    diff = D.domain_classifier_accuracy(a, b + 3.0)
    assert diff["accuracy"] > 0.97
    assert D.domain_classifier_accuracy(a, b, seed=3) == D.domain_classifier_accuracy(a, b, seed=3)
    with pytest.raises(ShiftkitError):
        D.domain_classifier_accuracy(a[:3], b)
    with pytest.raises(ShiftkitError):
        D.domain_classifier_accuracy(a, b[:, :2])
    with pytest.raises(ShiftkitError):
        D.domain_classifier_accuracy(a, b, folds=1)


def test_feature_gap_hook():
    rng = np.random.default_rng(1)
    g = D.feature_gap(rng.normal(size=(100, 8)), rng.normal(2.0, size=(120, 8)), mmd_max_n=100)
    assert g["accuracy"] > 0.95 and g["mmd2"] > 0.1 and g["dim"] == 8


def _samples(n, rng, lo, hi, size=16):
    return [Sample(rng.integers(lo, hi, (size, size, 3), dtype=np.uint8), path=f"{lo}_{i}.png") for i in range(n)]


def test_gap_score_same_and_different():
    rng = np.random.default_rng(0)
    a, b = _samples(60, rng, 0, 256), _samples(60, rng, 0, 256)
    dark = _samples(60, rng, 0, 120)
    kw = dict(progress=False, work_size=16)
    same = D.gap_score(a, b, **kw)
    assert set(same) == {"properties", "pixels"}
    assert 0.3 <= same["properties"]["accuracy"] <= 0.7
    assert 0.3 <= same["pixels"]["accuracy"] <= 0.7
    diff = D.gap_score(a, dark, **kw)
    assert diff["properties"]["accuracy"] > 0.95 and diff["pixels"]["accuracy"] > 0.95
    assert diff["pixels"]["mmd2"] > same["pixels"]["mmd2"]
    with pytest.raises(ShiftkitError):
        D.gap_score(a, b, feature_sets=("nope",), **kw)
