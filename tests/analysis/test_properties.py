import colorsys
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from shiftkit.analysis import properties as P
from shiftkit.analysis.properties import PropertyTable, compute_properties
from shiftkit.data import open_dataset
from shiftkit.data.sample import Boxes, Sample
from shiftkit.errors import ShiftkitError

RNG = np.random.default_rng(0)


def _lum_np(img):  # img HxWx3 float64
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _conv_valid_np(y, k):
    h, w = y.shape
    out = np.zeros((h - 2, w - 2))
    for i in range(h - 2):
        for j in range(w - 2):
            out[i, j] = (y[i : i + 3, j : j + 3] * k).sum()
    return out


# ---------------------------------------------------------------- smoke / bad args / shapes
def test_smoke_and_shapes():
    x = torch.rand(2, 3, 16, 20)
    props = P.image_properties(x)
    assert set(props) == set(P.PIXEL_PROPERTIES)
    for v in props.values():
        assert v.shape == (2,) and torch.isfinite(v).all()
    assert P.simple_features(x).shape == (2, P.FEATURE_DIM)
    assert P.luminance(x).shape == (2, 1, 16, 20)
    assert P.luminance_histogram(x).shape == (2, 256)


@pytest.mark.parametrize("bad", [torch.rand(3, 8, 8), torch.rand(1, 2, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        P.brightness(bad)


def test_too_small_for_stencils():
    with pytest.raises(ValueError, match="at least 3x3"):
        P.sharpness(torch.rand(1, 1, 2, 8))
    with pytest.raises(TypeError):
        P.contrast(np.zeros((1, 1, 4, 4)))


# ---------------------------------------------------------------- correctness against numpy
def test_against_numpy_reference():
    img = RNG.random((7, 9, 3))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # float64
    props = P.image_properties(x)
    y = _lum_np(img)
    assert props["brightness"].item() == pytest.approx(y.mean())
    assert props["contrast"].item() == pytest.approx(y.std())
    lap = _conv_valid_np(y, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]))
    assert props["sharpness"].item() == pytest.approx(lap.var())
    n = _conv_valid_np(y, np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]]))
    sigma = math.sqrt(math.pi / 2) * np.abs(n).sum() / (6 * 5 * 7)
    assert props["noise"].item() == pytest.approx(sigma)
    sat = np.mean([colorsys.rgb_to_hsv(*px)[1] for px in img.reshape(-1, 3)])
    assert props["saturation"].item() == pytest.approx(sat)
    rg = img[..., 0] - img[..., 1]
    yb = 0.5 * (img[..., 0] + img[..., 1]) - img[..., 2]
    m = math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    assert props["colourfulness"].item() == pytest.approx(m)
    q = np.clip(np.round(y * 255), 0, 255).astype(int)
    _, counts = np.unique(q, return_counts=True)
    p = counts / counts.sum()
    assert props["entropy"].item() == pytest.approx(-(p * np.log2(p)).sum())
    gx, gy = np.abs(np.diff(y, axis=1)).mean(), np.abs(np.diff(y, axis=0)).mean()
    assert props["orientation"].item() == pytest.approx(math.log((gx + 1e-6) / (gy + 1e-6)))


def test_orientation_quarter_turn_and_flip():
    x = torch.rand(3, 3, 9, 12)
    o = P.orientation(x)
    assert torch.allclose(P.orientation(x.rot90(1, (2, 3))), -o, atol=1e-5)
    assert torch.allclose(P.orientation(x.flip(3)), o, atol=1e-5) and torch.allclose(P.orientation(x.flip(2)), o, atol=1e-5)
    stripes = torch.zeros(1, 1, 8, 8)
    stripes[..., ::2] = 1.0  # columns alternate: every step across x changes, none down y
    assert P.orientation(stripes).item() > 10 and P.orientation(stripes.transpose(2, 3)).item() < -10
    with pytest.raises(ValueError, match="at least 2x2"):
        P.orientation(torch.rand(1, 1, 1, 8))


def test_constant_images():
    x = torch.full((2, 3, 8, 8), 0.25)
    props = P.image_properties(x)
    assert torch.allclose(props["brightness"], torch.tensor(0.25))
    for k in ("contrast", "sharpness", "noise", "entropy", "saturation", "colourfulness", "orientation"):
        assert torch.allclose(props[k], torch.zeros(2), atol=1e-6), k


def test_gray_equals_replicated_rgb():
    g = torch.rand(3, 1, 10, 12)
    pg, prgb = P.image_properties(g), P.image_properties(g.expand(-1, 3, -1, -1).contiguous())
    for k in ("brightness", "contrast", "sharpness", "noise", "entropy", "orientation"):
        assert torch.allclose(pg[k], prgb[k], atol=1e-5), k
    assert (pg["saturation"] == 0).all() and (pg["colourfulness"] == 0).all()
    assert torch.allclose(prgb["saturation"], torch.zeros(3), atol=1e-6)
    assert torch.allclose(prgb["colourfulness"], torch.zeros(3), atol=1e-6)


def test_entropy_two_levels_and_uint8_bins():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :] = 1.0
    assert P.entropy(x).item() == pytest.approx(1.0)
    # every 8-bit grey level lands in its own bin
    levels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16) / 255
    assert (P.luminance_histogram(levels) == 1).all()
    assert P.entropy(levels).item() == pytest.approx(8.0)


def test_noise_estimates_gaussian_sigma():
    g = torch.Generator().manual_seed(0)
    sigma = 0.05
    ramp = torch.linspace(0.2, 0.8, 256).view(1, 1, 1, 256).expand(2, 1, 256, 256)  # planar: invisible to N
    x = ramp + sigma * torch.randn(2, 1, 256, 256, generator=g)
    est = P.noise(x)
    assert torch.allclose(est, torch.full((2,), sigma), rtol=0.03)
    assert P.noise(ramp.contiguous()).abs().max() < 1e-6


def test_sharpness_drops_with_blur():
    x = torch.rand(1, 1, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert P.sharpness(blurred) < P.sharpness(x) / 4


def test_gradients():
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for f in (P.brightness, P.contrast, P.sharpness, P.colourfulness, P.noise, P.saturation, P.orientation):
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-4), f.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(2, 3, 16, 16)
    a, b = P.image_properties(x), P.image_properties(x.cuda())
    for k in a:
        assert torch.allclose(a[k], b[k].cpu(), atol=1e-4), k
    assert torch.allclose(P.simple_features(x), P.simple_features(x.cuda()).cpu(), atol=1e-4)


# ---------------------------------------------------------------- object area
def test_mask_and_box_fractions():
    m = torch.tensor([[[0, 1, 255, 2], [0, 0, 0, 0]]], dtype=torch.uint8)
    assert P.mask_object_fraction(m).item() == pytest.approx(2 / 8)
    assert P.mask_object_fraction(m, ignore_index=None).item() == pytest.approx(3 / 8)
    # two overlapping 2x2 boxes in a 4x4 image: union 4 + 4 - 1 = 7
    assert P.boxes_union_fraction(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), 4, 4) == pytest.approx(7 / 16)
    # clipped to the image, degenerate boxes ignored, nested boxes counted once
    assert P.boxes_union_fraction(np.array([[-5, -5, 2, 4], [0, 0, 1, 1], [3, 3, 3, 4]]), 4, 4) == pytest.approx(8 / 16)
    assert P.boxes_union_fraction(np.zeros((0, 4)), 4, 4) == 0.0
    assert math.isnan(P.object_area_fraction(3, 4, 4))
    assert P.object_area_fraction(Boxes([[0, 0, 4, 2]], [1]), 4, 4) == pytest.approx(0.5)


# ---------------------------------------------------------------- features
def test_simple_features_layout():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0  # vertical edge: horizontal gradient only -> orientation bin 0
    f = P.simple_features(x)[0]
    cb = P.COLOUR_BINS
    hist = f[: 3 * cb].view(3, cb)
    assert torch.allclose(hist.sum(1), torch.ones(3))
    assert hist[:, 0].tolist() == [0.5, 0.5, 0.5] and hist[:, -1].tolist() == [0.5, 0.5, 0.5]
    thumb = f[3 * cb : 3 * cb + 256].view(16, 16)
    assert torch.equal(thumb, P.luminance(x)[0, 0])
    orient = f[3 * cb + 256 :].view(P.ORIENT_GRID * P.ORIENT_GRID, P.ORIENT_BINS)
    assert orient.sum().item() == pytest.approx(1.0)
    assert orient[:, 1:].abs().max() < 1e-6


# ---------------------------------------------------------------- table
def test_table_csv_roundtrip(tmp_path):
    t = PropertyTable(["a.png", "b.png"], {"brightness": np.array([0.1, 0.2]), "object_area": np.array([np.nan, 0.5])})
    t.to_csv(tmp_path / "t.csv")
    t.to_json(tmp_path / "t.json")
    r = PropertyTable.read_csv(tmp_path / "t.csv")
    assert r.paths == t.paths and np.array_equal(r["brightness"], t["brightness"])
    assert np.isnan(r["object_area"][0]) and r["object_area"][1] == 0.5
    assert t.defined() == ["brightness", "object_area"]
    with pytest.raises(ValueError):
        PropertyTable(["a"], {"x": np.zeros(2)})


# ---------------------------------------------------------------- streaming
def test_compute_on_samples_sizes_from_original():
    samples = [
        Sample(RNG.integers(0, 256, (30, 60, 3), dtype=np.uint8), path="wide.png"),
        Sample(RNG.integers(0, 256, (50, 25, 1), dtype=np.uint8), path="tall.png"),
        Sample(np.full((40, 40, 3), 128, np.uint8), target=np.zeros((40, 40), np.uint8), path="flat.png"),
    ]
    samples[2].target[:10] = 1
    t = compute_properties(samples, batch_size=2, progress=False, work_size=16, features=True)
    assert t.paths == ["wide.png", "tall.png", "flat.png"]
    assert t["width"].tolist() == [60, 25, 40] and t["height"].tolist() == [30, 50, 40]
    assert t["aspect_ratio"].tolist() == [2.0, 0.5, 1.0]
    assert np.isnan(t["object_area"][0]) and t["object_area"][2] == pytest.approx(0.25)
    assert t["contrast"][2] == 0 and t["brightness"][2] == pytest.approx(128 / 255)
    assert t.features.shape == (3, P.FEATURE_DIM)
    with pytest.raises(ShiftkitError):
        compute_properties([np.zeros((4, 4))], progress=False)
    with pytest.raises(ShiftkitError):
        compute_properties(samples, batch_size=0)


def _write_folder(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"im{i}.png")


def test_cache_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    _write_folder(root)
    calls = []
    real = P._prepare
    monkeypatch.setattr(P, "_prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16)
    assert len(calls) == 6 and first.meta["computed"] == 6
    calls.clear()
    second = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, features=True)
    assert calls == [] and second.meta["cached"] == 6
    for k in P.PIXEL_PROPERTIES:
        assert np.array_equal(first[k], second[k], equal_nan=True)
    # same bytes, new mtime: found by content hash, not recomputed
    st = os.stat(root / "im0.png")
    os.utime(root / "im0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16)
    assert calls == []
    # changed content: only that file is recomputed
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "im1.png")
    third = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16)
    assert len(calls) == 1 and third["brightness"][1] == 0
    # a different working size is a different cache
    calls.clear()
    compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=12)
    assert len(calls) == 6
    calls.clear()
    compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, cache=False)
    assert len(calls) == 6


def test_workers_match_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    _write_folder(root, n=5)
    a = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, cache=False, batch_size=2)
    b = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, cache=False, batch_size=2, workers=1)
    assert a.paths == b.paths
    for k in P.PROPERTIES:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


def test_skip_bad_images(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    _write_folder(root, n=3)
    (root / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(ShiftkitError, match="zz_broken"):
        compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16)
    errors = []
    t = compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, on_error="skip", errors=errors)
    assert len(t) == 3 and len(errors) == 1 and "zz_broken" in errors[0]


def test_segmentation_object_area_and_mask_edit(tmp_path, monkeypatch):
    from shiftkit.data import open_dataset

    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nobject\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        m = np.zeros((8, 10), np.uint8)
        m[: 2 * (i + 1)] = 1
        m[-1, :5] = 255  # ignore
        Image.fromarray(m).save(root / "masks" / f"s{i}.png")
    calls = []
    real = P._prepare
    monkeypatch.setattr(P, "_prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    t = compute_properties(open_dataset(root), progress=False, work_size=8)
    assert t["object_area"].tolist() == pytest.approx([0.25, 0.5, 0.75])
    calls.clear()
    m = np.zeros((8, 10), np.uint8)
    m[:1, :4] = 1
    Image.fromarray(m).save(root / "masks" / "s2.png")
    os.utime(root / "masks" / "s2.png", ns=(0, os.stat(root / "masks" / "s2.png").st_mtime_ns + 10**9))
    t2 = compute_properties(open_dataset(root), progress=False, work_size=8)
    assert len(calls) == 1 and t2["object_area"].tolist() == pytest.approx([0.25, 0.5, 0.05])


def test_subsets_share_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    _write_folder(root, n=4)
    ds = open_dataset(root, task="unlabeled")

    class Subset:
        def __init__(self, idx):
            self.root, self.idx = root, idx

        def __len__(self):
            return len(self.idx)

        def paths(self):
            return [ds.paths()[i] for i in self.idx]

        def __getitem__(self, k):
            return ds[self.idx[k]]

    calls = []
    real = P._prepare
    monkeypatch.setattr(P, "_prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    compute_properties(Subset([0, 1]), progress=False, work_size=16)
    compute_properties(Subset([2, 3]), progress=False, work_size=16)
    assert len(calls) == 4
    full = compute_properties(ds, progress=False, work_size=16)
    assert len(calls) == 4 and full.meta["cached"] == 4
    (root / "im3.png").unlink()
    with pytest.raises(ShiftkitError, match="im3"):
        compute_properties(Subset([2, 3]), progress=False, work_size=16)


def test_worker_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    _write_folder(root, n=2)
    (root / "zz_broken.png").write_bytes(b"")
    with pytest.raises(ShiftkitError) as info:
        compute_properties(open_dataset(root, task="unlabeled"), progress=False, work_size=16, workers=1)
    assert "zz_broken" in str(info.value) and "\n" not in str(info.value)
