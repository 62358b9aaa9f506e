import numpy as np
import pytest
import torch

from shiftkit.analysis.properties import compute_properties, orientation
from shiftkit.analysis.symmetry import (
    check_symmetries,
    ks_statistic,
    sign_flip_p_value,
)
from shiftkit.data.sample import Sample


def _stripes(vertical: bool, seed: int = 0, size: int = 64) -> np.ndarray:
    """Bars across one axis plus mild noise: vertical bars change along x (strong d/dx)."""
    rng = np.random.default_rng(seed)
    bars = ((np.arange(size) // 4) % 2 * 160 + 40).astype(float)
    img = np.tile(bars, (size, 1)) if vertical else np.tile(bars[:, None], (1, size))
    return np.clip(img + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def orientation_log_ratio(image: np.ndarray) -> float:
    """`properties.orientation` of one uint8 image at its own size."""
    x = torch.from_numpy(np.atleast_3d(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return float(orientation(x)[0])


def test_orientation_log_ratio_sign_and_quarter_turn():
    a = orientation_log_ratio(_stripes(True))
    assert a > 1.0  # vertical bars: horizontal gradients dominate
    assert orientation_log_ratio(np.rot90(_stripes(True)).copy()) == pytest.approx(-a, abs=1e-6)
    assert orientation_log_ratio(_stripes(False)) < -1.0
    # flips keep it; colour images use their luminance
    assert orientation_log_ratio(_stripes(True)[:, ::-1].copy()) == pytest.approx(a, abs=1e-6)
    rgb = np.repeat(_stripes(True)[:, :, None], 3, 2)
    assert orientation_log_ratio(rgb) == pytest.approx(a, abs=1e-5)


def test_orientation_log_ratio_downsizes_large_images():
    big = np.kron(_stripes(True, size=64), np.ones((8, 8), dtype=np.uint8))  # 512 x 512, at the working size 128
    table = compute_properties([Sample(big[:, :, None], 0, "big.png")], progress=False)
    assert table["orientation"][0] > 0.5


def test_ks_statistic():
    a = np.arange(10.0)
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 100) == 1.0
    assert ks_statistic(np.array([]), a) == 0.0


def test_rot90_dropped_when_the_data_has_an_orientation():
    ratios = np.array([orientation_log_ratio(_stripes(True, s)) for s in range(20)])
    kept, why = check_symmetries(("hflip", "vflip", "rot90"), ratios)
    assert kept == ("hflip", "vflip")
    assert len(why) == 1 and "dropped" in why[0] and "KS(a, -a) = 1.00" in why[0]


def test_rot90_kept_when_orientations_are_balanced():
    imgs = [_stripes(True, s) for s in range(10)]
    imgs += [np.rot90(im).copy() for im in imgs]  # every image turned as well: no preferred orientation
    ratios = np.array([orientation_log_ratio(im) for im in imgs])
    kept, why = check_symmetries(("hflip", "rot90"), ratios)
    assert kept == ("hflip", "rot90") and "kept" in why[0]


def test_rot90_kept_when_a_large_ks_is_chance():
    """60 draws from a symmetric distribution: KS(a, -a) = 0.33 passes the 0.2 size bar, but the
    sign-flip test sees it is what isotropic sets of 60 often show."""
    a = np.random.default_rng(49).normal(0, 1, 60)
    assert ks_statistic(a, -a) > 0.3
    kept, why = check_symmetries(("hflip", "rot90"), a)
    assert kept == ("hflip", "rot90") and "sign-flip p" in why[0] and "kept" in why[0]


def test_sign_flip_p_value_by_hand():
    # all 8 positive: KS(a, -a) = 1, which a flip reaches only with all signs equal (2 / 2^8),
    # so p is about (1 + 199 * 2 / 256) / 200 = 0.013
    a = np.arange(1.0, 9.0)
    p = sign_flip_p_value(a, ks_statistic(a, -a), flips=199, seed=0)
    assert p < 0.05
    assert sign_flip_p_value(a, 0.0, flips=9) == 1.0  # every flip reaches KS >= 0
    assert sign_flip_p_value(a, 0.5, seed=3) == sign_flip_p_value(a, 0.5, seed=3)  # deterministic


def test_no_check_without_ratios_or_without_rot90():
    assert check_symmetries(("hflip", "rot90"), None) == (("hflip", "rot90"), [])
    assert check_symmetries(("hflip",), np.array([2.0, 3.0])) == (("hflip",), [])


def test_benchmark_controls_use_the_symmetries_the_plan_kept(tmp_path):
    """B1's balance-sym control takes the guided plan's surviving symmetries (no rot90 on ELPV)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import elpv_defect_augment as E

    from shiftkit.augment.policy import OpSpec, Plan

    plan = Plan([OpSpec("blur", p=0.7, low=0.3, high=0.8, classes=["defective"], why="diagnosed"),
                 OpSpec("hflip", p=0.5, why="declared label-preserving symmetry"),
                 OpSpec("vflip", p=0.5, why="declared label-preserving symmetry")], 1.0, ["defective"],
                {"defective": 5}).to_dict()
    kept = E.plan_symmetries(plan)
    assert kept == ["hflip", "vflip"]
    sym = Plan.load(E.symmetry_plan("defective", 5, tmp_path / "sym.json", kept))
    assert [o.op for o in sym.ops] == ["hflip", "vflip"] and sym.new_samples == {"defective": 5}
