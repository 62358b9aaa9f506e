import math

import numpy as np
import pytest
import torch

from shiftkit.analysis.frechet import frechet_distance, frechet_from_features, gaussian_stats
from shiftkit.errors import ShiftkitError


def test_identical_sets_are_zero():
    f = np.random.default_rng(0).normal(size=(50, 6))
    assert frechet_from_features(f, f) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_gaussians_closed_form():
    # diagonal covariances commute: FD = ||m1 - m2||^2 + sum (sqrt(a) - sqrt(b))^2
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    want = (1 + 0 + 4) + ((1 - 2) ** 2 + (2 - 1) ** 2 + 0)
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(want, rel=1e-10)


def test_one_dimensional_hand_value():
    # N(0, 1) vs N(3, 4): 9 + 1 + 4 - 2 * sqrt(4) = 10
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0, rel=1e-12)


def test_general_covariances_against_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    ref = float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    got = frechet_distance(m1, s1, m2, s2)
    assert got == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(got, rel=1e-8)  # symmetric


def test_samples_converge_to_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(20000, 2))
    y = rng.normal([2.0, 0.0], [2.0, 1.0], size=(20000, 2))
    want = 4.0 + (1 - 2) ** 2
    assert frechet_from_features(x, y) == pytest.approx(want, abs=0.08)


def test_gaussian_stats_unbiased():
    f = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, cov = gaussian_stats(f)
    assert torch.allclose(mu, torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert torch.allclose(cov, torch.from_numpy(np.cov(f.numpy().T)))


def test_rank_deficient_sets_are_finite():
    rng = np.random.default_rng(3)
    d = frechet_from_features(rng.normal(size=(5, 40)), rng.normal(size=(6, 40)) + 1.0)
    assert math.isfinite(d) and d > 0


@pytest.mark.parametrize("bad", [
    lambda: gaussian_stats(np.zeros((1, 3))),
    lambda: gaussian_stats(np.zeros(3)),
    lambda: frechet_from_features(np.zeros((4, 3)), np.zeros((4, 2))),
    lambda: frechet_from_features(np.full((4, 2), np.nan), np.zeros((4, 2))),
    lambda: frechet_distance([0.0, 1.0], np.eye(2), [0.0], np.eye(1)),
])
def test_bad_arguments(bad):
    with pytest.raises(ShiftkitError):
        bad()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    a, b = torch.from_numpy(rng.normal(size=(30, 4))), torch.from_numpy(rng.normal(size=(30, 4)) + 0.5)
    assert frechet_from_features(a.cuda(), b.cuda()) == pytest.approx(frechet_from_features(a, b), rel=1e-6)
