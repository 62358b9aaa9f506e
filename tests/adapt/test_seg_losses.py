"""Segmentation losses against hand computations on tiny tensors."""

import math

import pytest
import torch

from shiftkit.adapt.seg_losses import (
    charbonnier_entropy_loss,
    class_ratio_prior_loss,
    class_ratios,
    classwise_thresholds,
    entropy_map,
    gan_loss,
    minent_loss,
    pseudo_labels,
    seg_cross_entropy,
    self_information,
)


def _logits():
    # N=1, C=2, H=1, W=2: pixel a has logits (0, 0) -> p = (.5, .5); pixel b (ln 3, 0) -> p = (.75, .25)
    return torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]], requires_grad=True)


def test_seg_cross_entropy_hand_and_ignore():
    z = _logits()
    y = torch.tensor([[[1, 0]]])
    want = (-math.log(0.5) - math.log(0.75)) / 2
    assert seg_cross_entropy(z, y).item() == pytest.approx(want, rel=1e-6)
    y_ign = torch.tensor([[[255, 0]]])
    assert seg_cross_entropy(z, y_ign).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    allign = seg_cross_entropy(z, torch.full((1, 1, 2), 255))
    assert allign.item() == 0.0
    allign.backward()  # connected to the graph, zero gradient
    assert torch.count_nonzero(z.grad) == 0


def test_seg_cross_entropy_resizes_and_refuses_bad_ids():
    z = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    assert seg_cross_entropy(z, y).item() == pytest.approx(math.log(3), rel=1e-6)
    with pytest.raises(ValueError, match="outside"):
        seg_cross_entropy(z, torch.full((2, 4, 4), 7))
    with pytest.raises(ValueError):
        seg_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_self_information_and_entropy_map():
    p = torch.tensor([[[[0.5, 0.75]], [[0.5, 0.25]]]])
    i = self_information(p)
    assert i.shape == p.shape
    ln2 = math.log(2)
    assert i[0, 0, 0, 0].item() == pytest.approx(-0.5 * math.log(0.5) / ln2, rel=1e-6)
    assert i[0, 1, 0, 1].item() == pytest.approx(-0.25 * math.log(0.25) / ln2, rel=1e-6)
    e = entropy_map(p)
    assert e.shape == (1, 1, 2)
    assert e[0, 0, 0].item() == pytest.approx(1.0, rel=1e-6)  # uniform -> 1
    assert torch.allclose(i.sum(1), e, atol=1e-6)


def test_minent_hand_and_gradient():
    z = _logits()
    h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    want = (math.log(2) + h_b) / 2 / math.log(2)
    loss = minent_loss(z)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    # at the uniform pixel the entropy is maximal: zero gradient there; at pixel b it pushes the logits apart
    assert torch.allclose(z.grad[0, :, 0, 0], torch.zeros(2), atol=1e-7)
    assert z.grad[0, 0, 0, 1].item() < 0 < z.grad[0, 1, 0, 1].item()


def test_charbonnier_entropy_hand():
    z = _logits()
    e_a, e_b = 1.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    want = ((e_a**2 + 1e-8) ** 2 + (e_b**2 + 1e-8) ** 2) / 2
    loss = charbonnier_entropy_loss(z, eta=2.0)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError):
        charbonnier_entropy_loss(z, eta=0)


def test_gan_loss_bce_and_ls():
    d = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)
    s = 1 / (1 + math.exp(-2.0))
    assert gan_loss(d, 1.0).item() == pytest.approx((math.log(2) - math.log(s)) / 2, rel=1e-6)
    assert gan_loss(d, 0.0).item() == pytest.approx((math.log(2) - math.log(1 - s)) / 2, rel=1e-6)
    ls = gan_loss(d, 1.0, "ls")
    assert ls.item() == pytest.approx((1.0 + 1.0) / 2)
    ls.backward()
    assert torch.allclose(d.grad, torch.tensor([[[[-1.0, 1.0]]]]))
    with pytest.raises(ValueError):
        gan_loss(d, 1.0, "wgan")


def test_class_ratio_prior_hinge_and_kl():
    # q = mean prediction = (0.625, 0.375)
    p = torch.tensor([[[[0.5, 0.75]], [[0.5, 0.25]]]])
    prior = torch.tensor([0.2, 0.8])
    # hinge: max(0, .5*.2 - .625) + max(0, .5*.8 - .375) = 0 + 0.025
    assert class_ratio_prior_loss(p, prior, "hinge", 0.5).item() == pytest.approx(0.025, abs=1e-6)
    want_kl = 0.2 * math.log(0.2 / 0.625) + 0.8 * math.log(0.8 / 0.375)
    assert class_ratio_prior_loss(p, prior, "kl").item() == pytest.approx(want_kl, rel=1e-5)
    pg = p.clone().requires_grad_(True)
    class_ratio_prior_loss(pg, prior, "kl").backward()
    assert pg.grad[0, 1].sum() < 0  # raising the rare-predicted class 1 lowers the loss
    with pytest.raises(ValueError):
        class_ratio_prior_loss(p, torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError):
        class_ratio_prior_loss(p, torch.tensor([1.0]))


def test_class_ratios_counts_labelled_pixels():
    y = torch.tensor([[[0, 1, 1, 255]]])
    assert torch.allclose(class_ratios(y, 3), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        class_ratios(torch.full((1, 2, 2), 255), 3)


def test_classwise_thresholds_fda_rule():
    conf = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.95, 0.97, 0.99])
    lab = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    t = classwise_thresholds(conf, lab, 3)
    # class 0: sorted [.2 .4 .6 .8], index round(4 * .5) = 2 -> .6; class 1: index round(1.5) = 2 -> .99 capped at .9; class 2 unseen -> 0
    assert torch.allclose(t, torch.tensor([0.6, 0.9, 0.0]))
    probs = torch.tensor([[[[0.55, 0.3]], [[0.45, 0.7]]]])
    y = pseudo_labels(probs, torch.tensor([0.6, 0.6]))
    assert y.tolist() == [[[255, 1]]]


def test_classwise_thresholds_capped_by_a_class_prior():
    # 10 pixels; class 1 is predicted on 6 of them although its prior share is 0.2 (2 pixels)
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95, 0.85, 0.75, 0.65, 0.55, 0.5])
    lab = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    plain = classwise_thresholds(conf, lab, 3)
    # FDA rule: class 0 sorted [.6 .7 .8 .9] -> index 2 = .8; class 1 sorted [.5 .55 .65 .75 .85 .95] -> index 3 = .75
    assert torch.allclose(plain, torch.tensor([0.8, 0.75, 0.0]))
    capped = classwise_thresholds(conf, lab, 3, prior=torch.tensor([0.7, 0.2, 0.1]))
    # class 1 would keep 3 (.75 .85 .95) > floor(0.2 * 10) = 2: its threshold rises to its 2nd most confident, .85;
    # class 0 keeps 2 <= 7: unchanged; class 2 is never predicted
    assert torch.allclose(capped, torch.tensor([0.8, 0.85, 0.0]))
    assert int((conf[lab == 1] >= capped[1]).sum()) == 2
    none = classwise_thresholds(conf, lab, 3, prior=[0.95, 0.0, 0.05])  # a zero share keeps nothing of that class
    assert math.isinf(float(none[1])) and not bool((conf[lab == 1] >= none[1]).any())
    for bad in ([0.5, 0.5], [1.0, -0.5, 0.5], [0.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="prior"):
            classwise_thresholds(conf, lab, 3, prior=bad)


def test_losses_run_on_cuda_if_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    z = torch.randn(2, 3, 4, 4, device="cuda")
    y = torch.randint(0, 3, (2, 4, 4), device="cuda")
    assert seg_cross_entropy(z, y).device.type == "cuda"
    assert minent_loss(z).device.type == "cuda"
    assert charbonnier_entropy_loss(z).device.type == "cuda"
