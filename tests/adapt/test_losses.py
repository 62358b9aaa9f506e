import math

import pytest
import torch

from shiftkit.adapt import losses as L


def test_cross_entropy_smoothing_matches_hand():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    eps = 0.1
    logp = [2.0 - math.log(math.exp(2) + 1 + math.exp(-1)), -math.log(math.exp(2) + 1 + math.exp(-1)), -1.0 - math.log(math.exp(2) + 1 + math.exp(-1))]
    q = [1 - eps + eps / 3, eps / 3, eps / 3]
    ref = -sum(qi * li for qi, li in zip(q, logp, strict=True))
    assert L.cross_entropy(z, y, label_smoothing=eps).item() == pytest.approx(ref, rel=1e-6)


def test_cross_entropy_bad_args():
    with pytest.raises(ValueError):
        L.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), label_smoothing=1.5)
    with pytest.raises(ValueError):
        L.cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_entropy_hand_and_shapes():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    h = L.entropy(p)
    assert h.shape == (2,)
    assert h[0].item() == pytest.approx(math.log(2))
    assert h[1].item() == pytest.approx(0.0, abs=1e-6)
    seg = torch.zeros(2, 4, 3, 5)
    assert L.entropy_from_logits(seg).shape == (2, 3, 5)
    assert torch.allclose(L.entropy_from_logits(seg), torch.full((2, 3, 5), math.log(4)))


def test_information_maximization_hand():
    # two confident samples on different classes: mean entropy 0, entropy of mean log 2
    z = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert L.information_maximization(z).item() == pytest.approx(-math.log(2), abs=1e-5)
    # both on class 0: entropy of the mean is 0 too
    z2 = torch.tensor([[50.0, 0.0], [50.0, 0.0]])
    assert L.information_maximization(z2).item() == pytest.approx(0.0, abs=1e-5)
    # uniform: mean entropy log2, entropy of mean log2
    assert L.information_maximization(torch.zeros(3, 2)).item() == pytest.approx(0.0, abs=1e-6)


def test_grad_reverse_flips_and_scales():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = L.grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.5, -1.0, -1.5]))
    m = L.GradientReversal(2.0)
    x2 = torch.ones(2, requires_grad=True)
    m(x2).sum().backward()
    assert torch.allclose(x2.grad, torch.full((2,), -2.0))


def test_dann_lambda_schedule():
    assert L.dann_lambda(0.0) == pytest.approx(0.0)
    assert L.dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert L.dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    with pytest.raises(ValueError):
        L.dann_lambda(1.5)


def test_domain_bce_hand():
    ds = torch.tensor([[0.0], [2.0]])
    dt = torch.tensor([[-1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ref = 0.5 * ((-math.log(sig(0)) - math.log(sig(2))) / 2 + (-math.log(1 - sig(-1))))
    assert L.domain_bce(ds, dt).item() == pytest.approx(ref, rel=1e-6)
    ws, wt = torch.tensor([1.0, 3.0]), torch.tensor([2.0])
    per = [-math.log(sig(0)), -math.log(sig(2)), -math.log(1 - sig(-1))]
    ref_w = (1 * per[0] + 3 * per[1] + 2 * per[2]) / 6
    assert L.domain_bce(ds, dt, ws, wt).item() == pytest.approx(ref_w, rel=1e-6)
    with pytest.raises(ValueError):
        L.domain_bce(ds, dt, ws, None)


def test_entropy_weights_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    w = L.entropy_weights(p)
    raw = torch.tensor([2.0, 1 + math.exp(-math.log(2))])  # 2 and 1.5
    assert torch.allclose(w, raw * 2 / raw.sum())


def test_cdan_condition_outer_and_random():
    f = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.tensor([[0.25, 0.75]])
    t = L.cdan_condition(f, g)
    assert t.shape == (1, 6)
    assert torch.allclose(t, torch.tensor([[0.25, 0.5, 0.75, 0.75, 1.5, 2.25]]))
    rf, rg = torch.ones(3, 4), torch.full((2, 4), 2.0)
    tr = L.cdan_condition(f, g, rf, rg)
    assert torch.allclose(tr, torch.full((1, 4), 6.0 * 2.0 / 2.0))
    with pytest.raises(ValueError):
        L.cdan_condition(f, torch.ones(2, 2))


def test_mcc_hand():
    z = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    T = 1.0
    p = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    h = -(p * p.log()).sum(1)
    w = 1 + torch.exp(-h)
    w = 2 * w / w.sum()
    m = torch.zeros(2, 2)
    for i in range(2):
        m += w[i] * torch.outer(p[i], p[i])
    m = m / m.sum(1, keepdim=True)
    ref = (m.sum() - m.trace()) / 2
    got = L.mcc_loss(z, temperature=T)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # perfectly confident, distinct classes: no confusion
    assert L.mcc_loss(torch.tensor([[100.0, 0.0], [0.0, 100.0]]), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        L.mcc_loss(z, temperature=0)


def test_mcc_gradient_reduces_confusion():
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = L.mcc_loss(z)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    z2 = (z - 0.5 * z.grad).detach()
    assert L.mcc_loss(z2).item() < loss.item()


def test_flexmatch_thresholds_hand():
    sel = torch.tensor([0, 0, 0, 1, -1, -1])
    thr = L.flexmatch_thresholds(sel, 3, tau=0.9, warmup=True)
    beta = torch.tensor([3 / 3, 1 / 3, 0.0])
    assert torch.allclose(thr, 0.9 * beta / (2 - beta))
    sel2 = torch.tensor([0, 0, 1, -1, -1, -1, -1])
    thr2 = L.flexmatch_thresholds(sel2, 2, tau=0.8, warmup=True)
    beta2 = torch.tensor([2 / 4, 1 / 4])
    assert torch.allclose(thr2, 0.8 * beta2 / (2 - beta2))
    thr3 = L.flexmatch_thresholds(sel2, 2, tau=0.8, warmup=False, mapping="linear")
    assert torch.allclose(thr3, 0.8 * torch.tensor([1.0, 0.5]))


def test_pseudo_label_loss_hand():
    pw = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    thr = torch.tensor([0.95, 0.7])
    loss, mask, labels = L.pseudo_label_loss(zs, pw, thr)
    assert mask.tolist() == [0.0, 0.0, 1.0]
    assert labels.tolist() == [0, 1, 1]
    ref = -math.log(1 / (1 + math.exp(2.0))) / 3
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert zs.grad[0].abs().sum() == 0 and zs.grad[2].abs().sum() > 0
    loss2, mask2, _ = L.pseudo_label_loss(zs, pw, 0.5)
    assert mask2.tolist() == [1.0, 1.0, 1.0]
