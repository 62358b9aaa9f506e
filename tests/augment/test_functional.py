import pytest
import torch

from shiftkit.augment import functional as AF
from shiftkit.augment.functional import photometric_transform, random_photometric


def _scene(h=16, w=24, boxes=((2, 3, 9, 7), (12, 1, 20, 14))):
    """An image, a mask and boxes that draw the same rectangles (box edges = pixel edges)."""
    img = torch.zeros(1, 3, h, w)
    mask = torch.zeros(1, h, w, dtype=torch.long)
    for cls, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        img[0, :, y1:y2, x1:x2] = cls / 3
        mask[0, y1:y2, x1:x2] = cls
    return img, mask, [torch.tensor(boxes, dtype=torch.float32)]


def _rects_from_mask(mask):
    out = []
    for cls in sorted(set(mask.unique().tolist()) - {0}):
        ys, xs = torch.nonzero(mask == cls, as_tuple=True)
        out.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("op", ["hflip", "vflip", "rot1", "rot2", "rot3"])
def test_geometric_ops_keep_mask_and_boxes_aligned_pixel_exactly(op):
    img, mask, boxes = _scene()
    if op.startswith("rot"):
        out_img, out_mask, out_boxes = AF.rot90(img, mask, boxes, k=int(op[-1]))
    else:
        out_img, out_mask, out_boxes = getattr(AF, op)(img, mask, boxes)
    # the mask and the image still draw the same rectangles, and the boxes are exactly those rectangles
    assert torch.equal((out_img[0, 0] * 3).round().long(), out_mask[0])
    assert torch.equal(_rects_from_mask(out_mask[0]), out_boxes[0])


def test_crop_resize_keeps_alignment_and_drops_boxes_outside():
    img, mask, boxes = _scene()
    crops = torch.tensor([[0, 0, 8, 12]])  # top, left, h, w: keeps box 1 partly, box 2 not at all
    out_img, out_mask, out_boxes, keeps = AF.crop_resize(img, mask, boxes, crops, size=(16, 24))
    assert out_img.shape == (1, 3, 16, 24) and out_mask.shape == (1, 16, 24)
    assert keeps[0].tolist() == [True, False]
    assert torch.equal(_rects_from_mask(out_mask[0]), out_boxes[0])  # scale 2, nearest: exact
    assert set(out_mask.unique().tolist()) <= {0, 1, 2}  # ids never blended


def test_crop_resize_rejects_bad_crops():
    img, mask, boxes = _scene()
    with pytest.raises(ValueError):
        AF.crop_resize(img, mask, boxes, torch.tensor([[10, 0, 10, 5]]), size=(8, 8))
    with pytest.raises(ValueError):
        AF.crop_resize(img, mask, boxes, torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4]]), size=(8, 8))


def test_brightness_to_hits_the_target_mean_luminance():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 1, 8, 8, generator=g) * 0.5 + 0.25
    target = torch.tensor([0.1, 0.3, 0.7, 0.9])
    out = AF.brightness_to(imgs, target)
    assert torch.allclose(out.mean((1, 2, 3)), target, atol=1e-4)
    # the order of pixel values (the content) is preserved
    assert torch.equal(out[0].flatten().argsort(), imgs[0].flatten().argsort())


def test_contrast_matches_formula_and_zero_factor_is_flat():
    imgs = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]])
    out = AF.contrast(imgs, torch.tensor([0.5]))
    assert torch.allclose(out, torch.tensor([[[[0.35, 0.45], [0.55, 0.65]]]]))
    assert torch.allclose(AF.contrast(imgs, torch.tensor([0.0])), torch.full_like(imgs, 0.5))


def test_blur_zero_sigma_is_identity_and_blur_lowers_variance():
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 3, 16, 16, generator=g)
    out = AF.blur(imgs, torch.tensor([0.0, 2.0]))
    assert torch.equal(out[0], imgs[0])
    assert out[1].var() < imgs[1].var()


def test_noise_is_seeded_and_gamma_formula():
    imgs = torch.full((2, 1, 4, 4), 0.5)
    a = AF.noise(imgs, torch.tensor([0.1, 0.1]), generator=torch.Generator().manual_seed(3))
    b = AF.noise(imgs, torch.tensor([0.1, 0.1]), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, imgs)
    assert torch.allclose(AF.gamma(imgs, torch.tensor([2.0, 1.0])), torch.stack([imgs[0] ** 2, imgs[1]]))


def test_colour_ops_leave_grayscale_alone_and_change_rgb():
    gray = torch.rand(1, 1, 4, 4)
    assert torch.equal(AF.saturation(gray, torch.tensor([0.0])), gray)
    rgb = torch.rand(1, 3, 4, 4)
    desat = AF.saturation(rgb, torch.tensor([0.0]))
    assert torch.allclose(desat[:, 0], desat[:, 1], atol=1e-5)


def test_photometric_ops_are_differentiable():
    imgs = torch.rand(2, 3, 8, 8, requires_grad=True)
    for name in ("brightness", "contrast", "gamma", "blur", "brightness_to"):
        param = torch.tensor([0.8, 1.2]) if name != "blur" else torch.tensor([1.0, 0.5])
        if name == "brightness_to":
            param = torch.tensor([0.3, 0.6])
        out, _, _ = AF.apply_op(name, imgs, param)
        (grad,) = torch.autograd.grad(out.sum(), imgs)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError):
        AF.hflip(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        AF.brightness(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unknown photometric op"):
        AF.apply_op("posterize", torch.zeros(1, 1, 4, 4), torch.tensor([1.0]))


def test_photometric_transform_by_hand():
    """One image, two pixels, channels (r, g, b): pixel 1 = (0.2, 0.4, 0.6), pixel 2 = (0.0, 0.2, 1.0); mean 0.4.
    c = 2, b = 0.1: u = clamp(2 (x - 0.4) + 0.4 + 0.1) -> pixel 1 (0.1, 0.5, 0.9), pixel 2 (0, 0.1, 1.0 clamped);
    perm (2, 0, 1) -> pixel 1 (0.9, 0.1, 0.5), pixel 2 (1.0, 0, 0.1); grey: channel means 0.5 and 1.1 / 3."""
    x = torch.tensor([[0.2, 0.0], [0.4, 0.2], [0.6, 1.0]]).view(1, 3, 1, 2)
    args = (torch.tensor([0.1]), torch.tensor([2.0]), torch.tensor([[2, 0, 1]]))
    got = photometric_transform(x, *args, torch.tensor([False]))
    assert torch.allclose(got.view(3, 2), torch.tensor([[0.9, 1.0], [0.1, 0.0], [0.5, 0.1]]), atol=1e-6)
    got = photometric_transform(x, *args, torch.tensor([True]))
    assert torch.allclose(got.view(3, 2), torch.tensor([[0.5, 1.1 / 3]] * 3), atol=1e-6)
    # identity parameters give x back; strength 0 draws nothing
    same = photometric_transform(x, torch.zeros(1), torch.ones(1), torch.tensor([[0, 1, 2]]), torch.tensor([False]))
    assert torch.allclose(same, x)
    assert random_photometric(x, 0.0) is x
    # two images get their own draws; values stay in [0, 1]; the same generator seed repeats the draw
    xs = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    a = random_photometric(xs, 0.5, torch.Generator().manual_seed(3))
    b = random_photometric(xs, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, xs)
    # inversion: 1 - the colour-changed image, per image; invert = 0 keeps random_photometric's draws unchanged
    got = photometric_transform(x, *args, torch.tensor([False]), torch.tensor([True]))
    assert torch.allclose(got.view(3, 2), 1 - torch.tensor([[0.9, 1.0], [0.1, 0.0], [0.5, 0.1]]), atol=1e-6)
    assert torch.equal(photometric_transform(x, *args, torch.tensor([False]), torch.tensor([False])),
                       photometric_transform(x, *args, torch.tensor([False])))
    assert torch.equal(random_photometric(xs, 0.5, torch.Generator().manual_seed(3), invert=0.0), a)
    assert torch.equal(random_photometric(xs, 0.0, invert=1.0), 1 - xs)  # strength 0: inversion alone
    flips = random_photometric(torch.zeros(400, 3, 1, 1), 0.0, torch.Generator().manual_seed(5), invert=0.5)
    assert 150 < int(flips.flatten(1)[:, 0].sum()) < 250  # about half the images inverted
    # any channel count: one grey channel keeps its only order, inversion works the same
    one = torch.tensor([[[[0.25, 0.5]]]])
    assert torch.allclose(photometric_transform(one, torch.zeros(1), torch.ones(1), torch.tensor([[0]]), torch.tensor([True]),
                                                torch.tensor([True])), 1 - one)
    assert random_photometric(one, 0.5, torch.Generator().manual_seed(0)).shape == one.shape
    for bad, match in [(lambda: photometric_transform(x.long(), *args, torch.tensor([False])), "float"),
                       (lambda: photometric_transform(x[:, :2], *args, torch.tensor([False])), "shape"),
                       (lambda: photometric_transform(x, *args, torch.tensor([False]), torch.tensor([True, False])), "invert"),
                       (lambda: random_photometric(x, 0.3, invert=1.5), "probability"),
                       (lambda: photometric_transform(x, torch.zeros(2), torch.ones(1), args[2], torch.tensor([False])),
                        "shape"),
                       (lambda: photometric_transform(x, args[0], args[1], torch.tensor([[0, 0, 1]]), torch.tensor([False])),
                        "order of the channels 0..2"),
                       (lambda: random_photometric(x, 1.5), "strength")]:
        with pytest.raises(ValueError, match=match):
            bad()
