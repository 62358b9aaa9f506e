import pytest
import torch
from torch import nn

from shiftkit.adapt.augmented import (
    Augmented,
    adabn,
    compose,
    degrade_digits,
    digit_boxes,
    dihedral,
    flips,
    jitter,
    predict_probs,
    random_affine,
    scale_crop,
)
from shiftkit.adapt.base import Method, Phase, StepInfo


def test_dihedral_is_a_square_symmetry_per_image():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 5, 5)
    y = dihedral(x)
    assert y.shape == x.shape
    for i in range(16):
        ok = any(torch.equal(y[i], torch.rot90(x[i], k, (1, 2)).flip(2) if f else torch.rot90(x[i], k, (1, 2)))
                 for k in range(4) for f in (False, True))
        assert ok
    # different images get different symmetries (16 images, 8 choices)
    assert sum(torch.equal(y[i], x[i]) for i in range(16)) < 16


def test_flips_keep_the_axes_per_image():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 4, 6)  # no square needed: nothing turns
    y = flips(x)
    assert y.shape == x.shape
    seen = set()
    for i in range(16):
        options = {"none": x[i], "h": x[i].flip(-1), "v": x[i].flip(-2), "hv": x[i].flip(-1).flip(-2)}
        match = [k for k, o in options.items() if torch.equal(y[i], o)]
        assert match, i
        seen.add(match[0])
    assert len(seen) > 1  # images draw their own flips
    with pytest.raises(ValueError):
        flips(torch.rand(4, 5))


def test_dihedral_bad_arguments():
    with pytest.raises(ValueError):
        dihedral(torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError):
        dihedral(torch.rand(4, 5))


def test_scale_crop_identity_and_zoom():
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(scale_crop(x, 1.0), x)
    torch.manual_seed(1)
    y = scale_crop(x, 0.5)
    assert y.shape == x.shape and not torch.allclose(y, x)
    with pytest.raises(ValueError):
        scale_crop(x, 0.0)


def test_jitter_formula():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6) * 0.5 + 0.25
    torch.manual_seed(3)
    y = jitter(x, 0.2, 0.1)
    torch.manual_seed(3)
    c = torch.rand(4) * 0.4 + 0.8
    b = torch.rand(4) * 0.2 - 0.1
    m = x.mean((1, 2, 3), keepdim=True)
    ref = ((x - m) * c.view(4, 1, 1, 1) + m + b.view(4, 1, 1, 1)).clamp(0, 1)
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.equal(jitter(x, 0.0, 0.0), x)
    with pytest.raises(ValueError):
        jitter(x, -1.0)


def test_random_affine_zero_ranges_is_identity():
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(random_affine(x, 0, 0, 0, 0), x, atol=1e-5)
    with pytest.raises(ValueError):
        random_affine(x, scale=1.5)


def test_degrade_digits_hand_reference():
    # a full white 20x20 box -> all 16 counts -> white box again; black stays black
    x = torch.zeros(2, 1, 28, 28)
    x[0, :, 4:24, 4:24] = 1.0
    y = degrade_digits(x, threshold=(0.5, 0.5), thicken=0.0)
    assert y.shape == x.shape
    assert torch.allclose(y[0, :, 4:24, 4:24], torch.ones(1, 20, 20))
    assert y[0].sum() == 400 and y[1].abs().sum() == 0
    # a 20-high, 10-wide bar: its box (side 20) fills the 32x32 bitmap's height and its middle
    # 16 columns -> 8x8 counts 16 in columns 2..5 -> upsampled to 20 columns: output column j
    # samples 0.4 j - 0.3, so j = 6..13 are fully white and j <= 3, j >= 16 black
    x2 = torch.zeros(1, 1, 28, 28)
    x2[0, :, 4:24, 4:14] = 1.0
    y2 = degrade_digits(x2, threshold=(0.5, 0.5), thicken=0.0)[0, 0, 4:24, 4:24]
    assert torch.allclose(y2[:, 6:14], torch.ones(20, 8))
    assert y2[:, :4].abs().max() == 0 and y2[:, 16:].abs().max() == 0
    assert torch.allclose(y2[:, 4], torch.full((20,), 77 / 255))  # 0.3 of the way: round(0.3 * 255) / 255
    # the same bar moved elsewhere gives the same result: the box is found per image
    x3 = torch.zeros(1, 1, 28, 28)
    x3[0, :, 2:22, 10:20] = 1.0
    assert torch.allclose(degrade_digits(x3, threshold=(0.5, 0.5), thicken=0.0)[0, 0, 4:24, 4:24], y2)
    # thickening only adds ink
    torch.manual_seed(0)
    assert (degrade_digits(x2, threshold=(0.5, 0.5), thicken=1.0)[0, 0, 4:24, 4:24] >= y2 - 1e-6).all()
    with pytest.raises(ValueError):
        degrade_digits(x, thicken=2.0)


def test_digit_boxes():
    x = torch.zeros(2, 1, 6, 6)
    x[0, 0, 1:3, 2:5] = 1.0
    assert digit_boxes(x).tolist() == [[1, 2, 2, 4], [0, 5, 0, 5]]


class _Record(Method):
    name = "rec"
    streams = ("source",)

    def phases(self, net, batch, step):
        self.seen = batch["source"]["x"]
        return [Phase({"l": net(self.seen).sum()})]


def test_augmented_wraps_inner_method():
    inner = _Record()
    m = Augmented(inner, source_aug=lambda x: x + 1.0, description="plus one")
    x = torch.zeros(2, 1, 4, 4)
    ph = m.phases(nn.Identity(), {"source": {"x": x, "y": torch.zeros(2, dtype=torch.long)}}, StepInfo(0, 0, 1))
    assert torch.equal(inner.seen, x + 1) and torch.equal(x, torch.zeros_like(x))
    assert ph[0].resolve()["l"].item() == 32
    assert m.config()["augment"] == "plus one" and m.streams == ("source",)
    with pytest.raises(TypeError):
        Augmented(object())


def test_compose_order():
    f = compose(lambda x: x * 2, lambda x: x + 1)
    assert torch.equal(f(torch.ones(1, 1, 1, 1)), torch.full((1, 1, 1, 1), 3.0))


def test_predict_probs_flip_average():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):  # logit 0 = left-column mean, logit 1 = 0
            return torch.stack([x[:, 0, :, 0].mean(1), torch.zeros(len(x))], 1) + self.w

    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :, 0] = 1.0
    p = predict_probs(M(), x, "hflip")
    ref = (torch.softmax(torch.tensor([1.0, 0.0]), 0) + torch.softmax(torch.tensor([0.0, 0.0]), 0)) / 2
    assert torch.allclose(p[0], ref)
    with pytest.raises(ValueError):
        predict_probs(M(), x, "rot")


def test_adabn_sets_target_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    x = torch.randn(8, 1, 3, 3) * 3 + 5
    adabn(net, [x[:4], x[4:]])
    h = net[0](x)
    bn = net[1]
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    adabn(net, [x])  # one batch: the variance is that batch's (unbiased, as BatchNorm keeps it)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not net.training and bn.momentum == 0.1
    with pytest.raises(ValueError):
        adabn(nn.Linear(2, 2), [torch.zeros(1, 2)])
