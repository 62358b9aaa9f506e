import pytest
import torch

from shiftkit.transfer import functional as TF
from shiftkit.transfer.methods import FDA, ColorStats, HistogramMatching, PCATransfer, make_method


def _u8(*shape, seed=0, lo=0, hi=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.uint8)


def test_make_method_and_bad_arguments():
    assert isinstance(make_method("fda", beta=0.05), FDA) and make_method("fda", beta=0.05).beta == 0.05
    assert make_method("histogram", reference="set").pairs is False
    with pytest.raises(ValueError, match="unknown method"):
        make_method("cyclegan")
    with pytest.raises(ValueError, match="beta"):
        FDA(1.5)
    with pytest.raises(ValueError, match="reference"):
        ColorStats("both")
    with pytest.raises(ValueError, match="pass `tgt`"):
        FDA(0.1)(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="target batch"):
        FDA(0.1)(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="2 target images for 3"):
        FDA(0.1).apply_pairs(torch.rand(3, 3, 8, 8), [torch.rand(3, 8, 8)] * 2)
    with pytest.raises(ValueError, match="uint8"):
        FDA(0.1).apply_uint8(torch.rand(1, 3, 8, 8), targets=[torch.rand(3, 8, 8)])


@pytest.mark.parametrize("cls", [HistogramMatching, ColorStats])
def test_summaries_equal_images(cls):
    src = _u8(3, 3, 10, 12, seed=1)
    tgts = [_u8(3, 9, 7, seed=2), _u8(1, 12, 12, seed=3), _u8(3, 10, 12, seed=4)]  # mixed sizes and channels
    m = cls("image")
    by_images = m.apply_uint8(src, targets=tgts)
    sums = [m.target_summary(t.float().div(255).unsqueeze(0)) for t in tgts]
    by_summaries = m.apply_uint8(src, summaries=sums)
    assert by_images.dtype == torch.uint8 and by_images.shape == src.shape
    assert torch.equal(by_images, by_summaries)


def test_histogram_uint8_path_equals_float_path():
    src, tgt = _u8(2, 3, 9, 9, seed=5), _u8(2, 3, 9, 9, seed=6)
    m = HistogramMatching("image")
    a = m.apply_uint8(src, targets=list(tgt))
    b = TF.to_levels(TF.histogram_match_images(src.float() / 255, tgt.float() / 255))
    assert torch.equal(a, b)


def test_histogram_set_reference_matches_mean_histogram():
    tgt = torch.cat([_u8(2, 3, 6, 6, seed=7, hi=100), _u8(2, 3, 6, 6, seed=8, lo=150)]).float() / 255
    m = HistogramMatching("set")
    m.fit_target(tgt[:2])
    m.fit_target(tgt[2:])
    assert torch.allclose(m.set_histogram(3), TF.histograms(tgt).mean(0))
    with pytest.raises(ValueError, match="no target histogram"):
        HistogramMatching("set").set_histogram(3)
    out = m(torch.rand(2, 1, 6, 6))  # a gray source uses the luminance histogram of the set
    assert out.shape == (2, 1, 6, 6)


def test_color_stats_set_reference_pooled_lab_stats():
    tgt = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    m = ColorStats("set")
    m.fit_target(tgt[:1])
    m.fit_target(tgt[1:])
    mean, std = m.set_stats(3)
    lab = TF._lab(tgt).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mean, lab.mean(1)) and torch.allclose(std, lab.std(1, unbiased=False))


def test_pca_method_fits_streaming_and_maps_source_to_target_stats():
    src = torch.rand(6, 3, 5, 5, dtype=torch.float64)
    tgt = 0.3 + 0.2 * torch.rand(6, 3, 5, 5, dtype=torch.float64)
    m = PCATransfer(eps=0.0)
    for k in range(0, 6, 2):
        m.fit_source(src[k : k + 2])
        m.fit_target(tgt[k : k + 2])
    out = TF.pca_transfer(src, *m.gaussians(3), clamp=False, eps=0.0)
    n, s, ss = TF.pixel_moments(out)
    mu, cov = TF.moments_to_gaussian(n, s, ss)
    _, _, mt, ct = m.gaussians(3)
    assert torch.allclose(mu, mt, atol=1e-10) and torch.allclose(cov, ct, atol=1e-10)
    assert "target_cov" in m.summary()
    with pytest.raises(ValueError, match="no source pixel"):
        PCATransfer()(torch.rand(1, 3, 4, 4))


def test_fda_method_uint8_rounds_float_result():
    src, tgt = _u8(2, 1, 12, 12, seed=9), _u8(3, 16, 16, seed=10)
    m = FDA(0.1)
    out = m.apply_uint8(src, targets=[tgt, tgt])
    ref = TF.to_levels(TF.fda(src.float() / 255, (tgt.float() / 255).unsqueeze(0), 0.1))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("cls", [HistogramMatching, ColorStats])
def test_batched_summaries_equal_single(cls):
    m = cls("image")
    tgt = torch.rand(3, 3, 7, 9, dtype=torch.float64)
    batched = m.target_summaries(tgt)
    for k in range(3):
        one = m.target_summary(tgt[k : k + 1])
        for c in (1, 3):
            a, b = batched[k][c], one[c]
            pairs = zip(a, b, strict=True) if isinstance(a, tuple) else [(a, b)]
            assert all(torch.allclose(x, y) for x, y in pairs)


def test_fda_uint8_reuses_the_keyed_target_window():
    src, tgt = _u8(2, 3, 32, 32, seed=13), _u8(3, 40, 48, seed=14)
    m = FDA(0.05)
    first = m.apply_uint8(src, targets=[tgt, tgt], target_keys=[7, 7])
    ref = TF.to_levels(TF.fda(src.float() / 255, (tgt.float() / 255).unsqueeze(0), 0.05))
    assert (first.int() - ref.int()).abs().max() <= 1  # same maths in the 0..255 scale, rounded once
    # a known key is not recomputed: another image under key 7 still styles with the first window
    other = _u8(3, 40, 48, seed=15)
    again = m.apply_uint8(src, targets=[other, other], target_keys=[7, 7])
    assert torch.equal(again, first)
    fresh = m.apply_uint8(src, targets=[other, other], target_keys=[8, 8])
    assert not torch.equal(fresh, first)
    # a gray target for RGB sources, no keys: recomputed each call, same as the float path
    gray = _u8(1, 32, 32, seed=16)
    out = m.apply_uint8(src, targets=[gray, gray])
    ref = TF.to_levels(TF.fda(src.float() / 255, (gray.float() / 255).unsqueeze(0), 0.05))
    assert (out.int() - ref.int()).abs().max() <= 1


def test_histogram_uint8_reuses_the_keyed_target_histogram():
    src, tgt, other = _u8(2, 3, 9, 9, seed=17), _u8(3, 11, 7, seed=18), _u8(3, 11, 7, seed=19)
    m = HistogramMatching("image")
    first = m.apply_uint8(src, targets=[tgt, tgt], target_keys=["t", "t"])
    assert torch.equal(first, TF.to_levels(TF.histogram_match(src.float() / 255, TF.histograms(tgt[None].float() / 255))))
    assert torch.equal(m.apply_uint8(src, targets=[other, other], target_keys=["t", "t"]), first)
    assert not torch.equal(m.apply_uint8(src, targets=[other, other], target_keys=["u", "u"]), first)
