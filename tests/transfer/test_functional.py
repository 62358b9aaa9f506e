
import numpy as np
import pytest
import torch

from shiftkit.transfer import functional as TF


def _rand(*shape, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((1, 3, 4, 4)), "torch.Tensor"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "floating"),
        (torch.zeros(3, 4, 4), r"\(B, C, H, W\)"),
        (torch.zeros(1, 2, 4, 4), "1 or 3 channels"),
    ],
)
def test_bad_source_is_a_clear_value_error(bad, msg):
    with pytest.raises(ValueError, match=msg):
        TF.fda(bad, torch.zeros(1, 3, 4, 4), 0.1)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), "0.1", None])
def test_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match="beta"):
        TF.fda(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), beta)


def test_mismatched_batch():
    with pytest.raises(ValueError, match="target batch has 3 images but source has 2"):
        TF.fda(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8), 0.1)
    with pytest.raises(ValueError, match="target batch"):
        TF.histogram_match_images(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="target batch"):
        TF.color_stats_images(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))


def test_histogram_reference_shape_checked():
    with pytest.raises(ValueError, match="ref_hist"):
        TF.histogram_match(torch.rand(2, 3, 4, 4), torch.ones(3, 100))
    with pytest.raises(ValueError, match="non-negative"):
        TF.histogram_match(torch.rand(2, 3, 4, 4), -torch.ones(3, 256))


def test_pca_stat_shapes_checked():
    with pytest.raises(ValueError, match="src_mean"):
        TF.pca_transfer(torch.rand(1, 3, 4, 4), torch.zeros(1), torch.eye(3), torch.zeros(3), torch.eye(3))


# ------------------------------------------------------------------ channel policy
def test_match_channels_luminance_and_replication():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert TF.match_channels(rgb, 1).item() == pytest.approx(0.299 + 0.5 * 0.587)
    gray = torch.full((2, 1, 3, 3), 0.25)
    assert TF.match_channels(gray, 3).shape == (2, 3, 3, 3) and bool((TF.match_channels(gray, 3) == 0.25).all())


@pytest.mark.parametrize("fn", ["fda", "hist", "color"])
@pytest.mark.parametrize("cs, ct", [(1, 3), (3, 1), (3, 3), (1, 1)])
def test_output_keeps_source_shape(fn, cs, ct):
    src, tgt = _rand(2, cs, 10, 12, seed=1).float(), _rand(2, ct, 7, 9, seed=2).float()
    out = {"fda": lambda: TF.fda(src, tgt, 0.2), "hist": lambda: TF.histogram_match_images(src, tgt), "color": lambda: TF.color_stats_images(src, tgt)}[fn]()
    assert out.shape == src.shape and out.dtype == src.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1


# ------------------------------------------------------------------ FDA
def test_fda_window_is_centred_square_of_half_size_b():
    # H=W=10, beta=0.2 -> b=2: integer frequencies -2..2 on rows; 0..2 on the rfft columns
    m = TF.fda_window(10, 10, 0.2)
    rows = torch.tensor([0, 1, 2, 8, 9])
    expected = torch.zeros(10, 6, dtype=torch.bool)
    expected[rows[:, None], torch.arange(3)[None, :]] = True
    assert torch.equal(m, expected)
    # same window as the reference code's centred square on the fftshift-ed full spectrum
    full = torch.zeros(10, 10, dtype=torch.bool)
    full[5 - 2 : 5 + 3, 5 - 2 : 5 + 3] = True
    unshifted = torch.fft.ifftshift(full)
    assert torch.equal(unshifted[:, :6], m)


def test_fda_beta_zero_is_identity():
    src, tgt = _rand(3, 3, 9, 11, seed=3), _rand(3, 3, 9, 11, seed=4)
    assert torch.equal(TF.fda(src, tgt, 0.0, clamp=False), src)


def test_fda_full_window_gives_target_amplitude_and_source_phase():
    src, tgt = _rand(2, 3, 8, 12, seed=5), _rand(2, 3, 8, 12, seed=6)
    out = TF.fda(src, tgt, 1.0, clamp=False)
    fo, ft, fs = torch.fft.rfft2(out), torch.fft.rfft2(tgt), torch.fft.rfft2(src)
    assert torch.allclose(fo.abs(), ft.abs(), atol=1e-9)
    big = ft.abs() > 1e-6
    dphase = torch.angle(fo[big] * fs[big].conj())
    assert torch.allclose(dphase, torch.zeros_like(dphase), atol=1e-6)


def test_fda_matches_numpy_reference():
    # Yang & Soatto's FDA_source_to_target_np, written out with numpy's full fft2 + fftshift
    src, tgt = _rand(1, 3, 16, 16, seed=7), _rand(1, 3, 16, 16, seed=8)
    beta = 0.1
    s, t = src[0].numpy(), tgt[0].numpy()
    fs, ft = np.fft.fft2(s, axes=(-2, -1)), np.fft.fft2(t, axes=(-2, -1))
    a_s, p_s, a_t = np.fft.fftshift(np.abs(fs), axes=(-2, -1)), np.angle(fs), np.fft.fftshift(np.abs(ft), axes=(-2, -1))
    h, w = s.shape[1:]
    b = int(np.floor(min(h, w) * beta))
    ch, cw = h // 2, w // 2
    a_s[:, ch - b : ch + b + 1, cw - b : cw + b + 1] = a_t[:, ch - b : ch + b + 1, cw - b : cw + b + 1]
    a_s = np.fft.ifftshift(a_s, axes=(-2, -1))
    ref = np.real(np.fft.ifft2(a_s * np.exp(1j * p_s), axes=(-2, -1)))
    out = TF.fda(src, tgt, beta, clamp=False)[0].numpy()
    assert np.allclose(out, ref, atol=1e-10)


def test_fda_resizes_target_and_broadcasts_single_target():
    src, tgt = _rand(4, 3, 16, 16, seed=9), _rand(1, 3, 32, 24, seed=10)
    out = TF.fda(src, tgt, 0.05)
    assert out.shape == src.shape
    same = TF.fda(src[1:2], tgt, 0.05)
    assert torch.allclose(out[1:2], same, atol=1e-12)


def test_fda_gradient():
    src = _rand(1, 3, 8, 8, seed=11).requires_grad_()
    tgt = _rand(1, 3, 8, 8, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: TF.fda(a, b, 0.25, clamp=False), (src, tgt), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------ histogram
def test_histograms_count_levels():
    x = torch.tensor([0, 0, 1, 255], dtype=torch.float32).view(1, 1, 2, 2) / 255
    h = TF.histograms(x, normalize=False)
    assert h.shape == (1, 1, 256) and h[0, 0, 0] == 2 and h[0, 0, 1] == 1 and h[0, 0, 255] == 1 and h.sum() == 4


def test_histogram_output_cdf_matches_target():
    g = torch.Generator().manual_seed(0)
    src = torch.randperm(256, generator=g).view(1, 1, 16, 16).float() / 255  # every level once
    tgt = (torch.rand(1, 1, 20, 20, generator=g) ** 3).float()  # skewed dark
    out = TF.histogram_match_images(src, tgt)
    cdf_out = TF.cdf_from_hist(TF.histograms(out))
    cdf_tgt = TF.cdf_from_hist(TF.histograms(tgt))
    # bound from the docstring: at most the mass of one source level (1/256 here)
    assert float((cdf_out - cdf_tgt).abs().max()) <= 1 / 256 + 1e-9
    # values on the uint8 grid, and monotone in the source
    assert torch.equal(out * 255, (out * 255).round())
    order = src.flatten().argsort()
    assert bool((out.flatten()[order].diff() >= 0).all())


def test_histogram_hand_computed_lut():
    # source levels 0,1,2,3 once each; reference all mass on levels 10 and 20 (half each)
    src = torch.tensor([0, 1, 2, 3], dtype=torch.float32).view(1, 1, 2, 2) / 255
    ref = torch.zeros(1, 256)
    ref[0, 10] = ref[0, 20] = 1
    out = TF.histogram_match(src, ref) * 255
    assert out.round().flatten().tolist() == [10, 10, 20, 20]


def test_histogram_to_set_mean_broadcasts_per_channel():
    src = _rand(3, 3, 8, 8, seed=13).float()
    ref = TF.histograms(_rand(5, 3, 8, 8, seed=14).float()).mean(0)
    out = TF.histogram_match(src, ref)
    assert out.shape == src.shape


# ------------------------------------------------------------------ colour statistics
def test_color_stats_output_matches_target_lab_mean_std():
    src, tgt = _rand(2, 3, 12, 12, seed=15, lo=0.2, hi=0.8), _rand(2, 3, 10, 14, seed=16, lo=0.1, hi=0.6)
    out = TF.color_stats_images(src, tgt, clamp=False)
    mo, so = TF.lab_stats(out)
    mt, st = TF.lab_stats(tgt)
    assert torch.allclose(mo, mt, atol=1e-6) and torch.allclose(so, st, atol=1e-6)


def test_color_stats_hand_formula_on_lab():
    from kornia.color import lab_to_rgb, rgb_to_lab

    src = _rand(1, 3, 4, 4, seed=17, lo=0.3, hi=0.7)
    lab = rgb_to_lab(src)[0].reshape(3, -1)
    mean, std = lab.mean(1), lab.std(1, unbiased=False)
    mt, st = torch.tensor([50.0, 5.0, -5.0]), torch.tensor([10.0, 3.0, 2.0])
    ref = lab_to_rgb(((lab - mean[:, None]) / std[:, None] * st[:, None] + mt[:, None]).view(1, 3, 4, 4).to(src.dtype), clip=False)
    out = TF.color_stats(src, mt, st, clamp=False)
    assert torch.allclose(out, ref, atol=1e-9)


def test_color_stats_gray_source_transfers_lightness_only():
    src = _rand(2, 1, 8, 8, seed=18, lo=0.2, hi=0.8).float()
    tgt = _rand(2, 3, 8, 8, seed=19, lo=0.1, hi=0.5).float()
    out = TF.color_stats_images(src, tgt, clamp=False)
    assert out.shape == src.shape
    lo, _ = TF.lab_stats(out)
    lt, _ = TF.lab_stats(TF.to_gray(tgt))
    assert torch.allclose(lo[:, 0], lt[:, 0], atol=1e-3)


def test_color_stats_gradient():
    src = _rand(1, 3, 4, 4, seed=20, lo=0.2, hi=0.8).requires_grad_()
    mt, st = torch.tensor([40.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([8.0, 2.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: TF.color_stats(a, mt, st, clamp=False), (src,), eps=1e-6, atol=1e-4)


# ------------------------------------------------------------------ PCA
def _moments(x):
    n, s, ss = TF.pixel_moments(x)
    return TF.moments_to_gaussian(n, s, ss)


def test_pixel_moments_stream_equals_whole():
    x = _rand(6, 3, 5, 5, seed=21)
    a = TF.pixel_moments(x[:2])
    b = TF.pixel_moments(x[2:])
    mu, cov = TF.moments_to_gaussian(a[0] + b[0], a[1] + b[1], a[2] + b[2])
    p = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(mu, p.mean(1)) and torch.allclose(cov, torch.cov(p, correction=0), atol=1e-12)


def test_pca_output_has_target_mean_and_covariance():
    src = _rand(4, 3, 8, 8, seed=22)
    a = torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.3, 0.1], [0.1, 0.0, 0.2]], dtype=torch.float64)
    tgt = torch.einsum("ij,bjhw->bihw", a, _rand(4, 3, 8, 8, seed=23)) + 0.2
    ms, cs = _moments(src)
    mt, ct = _moments(tgt)
    out = TF.pca_transfer(src, ms, cs, mt, ct, clamp=False, eps=0.0)
    mo, co = _moments(out)
    assert torch.allclose(mo, mt, atol=1e-10) and torch.allclose(co, ct, atol=1e-10)


def test_pca_single_channel_is_mean_std():
    src, tgt = _rand(2, 1, 6, 6, seed=24), _rand(2, 1, 6, 6, seed=25, lo=0.2, hi=0.4)
    ms, cs = _moments(src)
    mt, ct = _moments(tgt)
    out = TF.pca_transfer(src, ms, cs, mt, ct, clamp=False, eps=0.0)
    ref = (src - ms) / cs.sqrt() * ct.sqrt() + mt
    assert torch.allclose(out, ref.view_as(out), atol=1e-12)


def test_pca_identity_when_sets_agree():
    x = _rand(2, 3, 6, 6, seed=26)
    m, c = _moments(x)
    assert torch.allclose(TF.pca_transfer(x, m, c, m, c, clamp=False, eps=0.0), x, atol=1e-10)


def test_pca_gradient():
    src = _rand(1, 3, 3, 3, seed=27).requires_grad_()
    m, c = _moments(_rand(2, 3, 4, 4, seed=28))
    mt, ct = _moments(_rand(2, 3, 4, 4, seed=29))
    assert torch.autograd.gradcheck(lambda a: TF.pca_transfer(a, m, c, mt, ct, clamp=False), (src,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    src, tgt = _rand(2, 3, 16, 16, seed=30).float(), _rand(2, 3, 16, 16, seed=31).float()
    for fn in (lambda s, t: TF.fda(s, t, 0.1), TF.histogram_match_images, TF.color_stats_images):
        assert torch.allclose(fn(src, tgt), fn(src.cuda(), tgt.cuda()).cpu(), atol=1e-4)


def test_non_contiguous_inputs():
    gray = _rand(2, 1, 6, 6, seed=32).float()
    rgb_view = gray.expand(-1, 3, -1, -1)  # a broadcast view, as match_channels makes
    ref = rgb_view.contiguous()
    tgt = _rand(2, 3, 5, 7, seed=33).float()
    assert torch.equal(TF.histograms(rgb_view), TF.histograms(ref))
    assert torch.equal(TF.histogram_match_images(rgb_view, tgt), TF.histogram_match_images(ref, tgt))
    assert torch.allclose(TF.fda(rgb_view.transpose(2, 3), tgt, 0.2), TF.fda(ref.transpose(2, 3).contiguous(), tgt, 0.2))


@pytest.mark.parametrize("h, w, beta", [(16, 16, 0.1), (15, 22, 0.2), (9, 8, 0.5), (12, 12, 1.0)])
def test_fda_dft_path_equals_fft_path(h, w, beta):
    src, tgt = _rand(2, 3, h, w, seed=40), _rand(2, 3, h, w, seed=41)
    a = TF.fda(src, tgt, beta, clamp=False, method="fft")
    b = TF.fda(src, tgt, beta, clamp=False, method="dft")
    assert torch.allclose(a, b, atol=1e-10)


def test_fda_zero_amplitude_takes_target_amplitude():
    src = torch.zeros(1, 1, 8, 8, dtype=torch.float64)  # every coefficient is 0: phase 0
    tgt = _rand(1, 1, 8, 8, seed=42)
    for m in ("fft", "dft"):
        out = TF.fda(src, tgt, 0.01, clamp=False, method=m)  # b = 0: the DC term only
        assert torch.allclose(out, torch.full_like(out, float(tgt.mean())), atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("c", [1, 3])
def test_uint8_histogram_and_lut_kernels_agree_with_and_without_opencv(monkeypatch, channels_last, c):
    pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(3)
    hwc = torch.randint(0, 256, (4, 17, 23, c), dtype=torch.uint8, generator=g)
    x = hwc.permute(0, 3, 1, 2) if channels_last else hwc.permute(0, 3, 1, 2).contiguous()
    lut = torch.randint(0, 256, (4, c, 256), dtype=torch.uint8, generator=g)
    expected_hist = torch.stack([torch.stack([torch.bincount(x[k, ch].reshape(-1), minlength=256) for ch in range(c)]) for k in range(4)])
    expected_out = torch.stack([torch.stack([lut[k, ch][x[k, ch].long()] for ch in range(c)]) for k in range(4)])
    for no_cv in ("1", "0"):
        monkeypatch.setenv("SHIFTKIT_NO_OPENCV", no_cv)
        assert torch.equal(TF.histograms_uint8(x), expected_hist)
        out = TF.apply_lut_uint8(x, lut)
        assert out.shape == x.shape and torch.equal(out, expected_out)
