"""Segmentation methods under the Method protocol: phases, which parameters each phase moves, options."""

from types import SimpleNamespace

import pytest
import torch

from shiftkit.adapt.base import StepInfo
from shiftkit.adapt.seg_base import build_seg_method, levels
from shiftkit.errors import ShiftkitError
from shiftkit.models.segmentation import UNet

from .conftest import UnlabelledImages

C, S = 3, 16


def _engine(model, n_target=6, total=4):
    g = torch.Generator().manual_seed(1)
    return SimpleNamespace(model=model, net=model, num_classes=C, size=S, device=torch.device("cpu"), total_steps=total,
                           global_step=0, streams={"target": UnlabelledImages(torch.rand(n_target, 3, S, S, generator=g))},
                           cfg=SimpleNamespace(eval_batch_size=4, progress=False), run=None)


def _batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, C, (n, S, S), generator=g)
    ys[:, 0, 0] = 255
    return {"source": {"x": torch.rand(n, 3, S, S, generator=g), "y": ys, "index": torch.arange(n)},
            "target": {"x": torch.rand(n, 3, S, S, generator=g), "index": torch.arange(n)}}


def _run_step(method, model, opts, batch, step=0, total=4):
    """What the engine does with the phases: per phase, zero every grad, backward the sum, step its groups."""
    record = []
    for ph in method.phases(model, batch, StepInfo(step, 0, total)):
        losses = ph.resolve()
        total_loss = sum(v for v in losses.values())
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        total_loss.backward()
        for gname in ph.groups:
            opts[gname].step()
        record.append((ph.groups, {k: float(v.detach()) for k, v in losses.items()}))
    return record


def _setup(name, **opts):
    torch.manual_seed(0)
    model = UNet(C, base=4, depth=2)
    m = build_seg_method(name, **opts)
    eng = _engine(model)
    m.setup(eng)
    optims = {"model": torch.optim.SGD(model.parameters(), lr=0.1)}
    for k, mod in m.modules().items():
        optims[k] = torch.optim.SGD(mod.parameters(), lr=0.1)
    return model, m, optims, eng


def _snapshot(mod):
    return [p.detach().clone() for p in mod.parameters()]


def _moved(before, mod):
    return any(not torch.equal(a, b) for a, b in zip(before, mod.parameters(), strict=True))


@pytest.mark.parametrize("name", ["source-only", "oracle", "minent", "fda-st"])
def test_one_phase_methods_train_the_model(name):
    model, m, opts, _ = _setup(name)
    before = _snapshot(model)
    rec = _run_step(m, model, opts, _batch())
    assert len(rec) == 1 and rec[0][0] == ("model",)
    assert all(torch.isfinite(torch.tensor(v)) for v in rec[0][1].values())
    assert "seg" in rec[0][1] and "seg_aux" in rec[0][1]  # the U-Net's auxiliary level is supervised too
    assert _moved(before, model)
    assert m.uses_target_labels == (name == "oracle")


@pytest.mark.parametrize("name,levels_", [("adaptseg", {"main", "aux"}), ("adaptseg-single", {"main"}), ("advent", {"main", "aux"})])
def test_adversarial_phases_move_the_right_parameters(name, levels_):
    model, m, opts, _ = _setup(name)
    assert {k[5:] for k in m.modules()} == levels_
    phases = m.phases(model, _batch(), StepInfo(0, 0, 4))
    assert [p.groups for p in phases] == [("model",), tuple(f"disc_{n}" for n in m.discs)]
    # phase 1: discriminators frozen, their gradients stay empty; the adversarial term reaches the model
    l1 = phases[0].resolve()
    assert {f"adv_{n}" for n in levels_} <= set(l1)
    d_before = {k: _snapshot(d) for k, d in m.modules().items()}
    adv = sum(v for k, v in l1.items() if k.startswith("adv_"))
    adv.backward(retain_graph=True)
    assert all(p.grad is None for d in m.modules().values() for p in d.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    # phase 2 (evaluated after phase 1): only the discriminators learn, from detached maps
    m_before = _snapshot(model)
    l2 = phases[1].resolve()
    assert set(l2) == {f"disc_{n}" for n in levels_}
    sum(l2.values()).backward()
    assert all(p.grad is None for p in model.parameters())
    for g in phases[1].groups:
        opts[g].step()
    assert all(_moved(d_before[k], d) for k, d in m.modules().items())
    assert not _moved(m_before, model)
    assert 0.0 <= phases[1].logs["disc_acc_main"] <= 1.0


def test_adaptseg_ls_gan_hand_reference():
    model, m1, _, _ = _setup("adaptseg", gan="ls", lambda_adv_main=0.5, lambda_adv_aux=0.0)
    assert set(m1.modules()) == {"disc_main"}  # a zero aux weight builds no aux discriminator
    b = _batch()
    l1 = m1.phases(model, b, StepInfo(0, 0, 4))[0].resolve()
    with torch.no_grad():  # the same concatenated forward (BatchNorm batch statistics included)
        z = levels(model, torch.cat([b["source"]["x"], b["target"]["x"]]))[0][2:]
        d = m1.discs["main"](torch.softmax(z, 1))
    assert l1["adv_main"].item() == pytest.approx(0.5 * ((d - 1) ** 2).mean().item(), rel=1e-5)


def test_minent_crp_counts_source_ratios():
    model, m, opts, _ = _setup("minent", crp=True, lambda_crp=1.0)
    b = _batch()
    rec = _run_step(m, model, opts, b)
    assert "crp" in rec[0][1] and m.name == "minent+crp"
    ys = b["source"]["y"]
    want = torch.bincount(ys[ys != 255], minlength=C).double()
    assert torch.allclose(m.state_dict()["class_counts"], want)
    m2 = build_seg_method("minent", crp=True)
    m2.load_state_dict(m.state_dict())
    assert torch.allclose(m2._ratios.ratios(), want / want.sum())


def test_fda_st_pseudo_labels_and_resume_state():
    model, m, opts, eng = _setup("fda-st", st_start=0.5, lambda_st=1.0)
    m.on_epoch_start(eng)
    assert m.pseudo is None  # not yet: step 0 < 0.5 * total
    eng.global_step = 2
    m.on_epoch_start(eng)
    assert m.pseudo is not None and m.pseudo.shape == (6, S, S) and m.pseudo.dtype == torch.uint8
    kept = m.pseudo != 255
    assert kept.any()
    assert set(m.pseudo[kept].unique().tolist()) <= set(range(C))
    rec = _run_step(m, model, opts, _batch(), step=2)
    assert "st" in rec[0][1] and "ent" in rec[0][1]
    m2 = build_seg_method("fda-st")
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.pseudo, m.pseudo)


def test_fda_st_source_prior_caps_the_pseudo_labels_and_survives_resume():
    model, m, opts, eng = _setup("fda-st", st_start=0.5, lambda_st=1.0, st_prior="source")
    batch = _batch()
    _run_step(m, model, opts, batch, step=0)  # source masks seen before the pseudo labels: the prior
    ys = batch["source"]["y"]
    expect = torch.bincount(ys[ys != 255].flatten(), minlength=C).double()
    assert torch.equal(m.source_counts[:C], expect)
    again = build_seg_method("fda-st", st_prior="source")
    again.load_state_dict(m.state_dict())  # a run resumed before the pseudo labels keeps the counts
    assert torch.equal(again.source_counts, m.source_counts)
    eng.global_step = 2
    m.on_epoch_start(eng)
    kept = m.pseudo[m.pseudo != 255].long()
    prior = expect / expect.sum()
    n = m.pseudo.numel()
    for c in range(C):  # no class keeps more than its prior share of the target pixels
        assert int((kept == c).sum()) <= int(float(prior[c]) * n) or float(m.thresholds[c]) == 0.0
    assert m.config()["st_prior"] == "source"
    from shiftkit.adapt.fda_st import predict_stream
    from shiftkit.adapt.seg_losses import classwise_thresholds

    conf, lab, _ = predict_stream([model], eng.streams["target"])
    assert not torch.equal(classwise_thresholds(conf, lab.long(), C), m.thresholds)  # the cap moved a threshold


def test_fda_st_prior_options_refused():
    for bad in ("target", [0.5, -0.1, 0.6], [0.0, 0.0, 0.0]):
        with pytest.raises(ShiftkitError, match="st_prior"):
            build_seg_method("fda-st", st_prior=bad)
    model, m, _, eng = _setup("fda-st", teachers=[UNet(C, base=4, depth=2)], st_prior="source")
    with pytest.raises(ShiftkitError, match="source pixels"):  # teachers label at once: no source seen yet
        m.on_epoch_start(eng)
    model, m, _, eng = _setup("fda-st", teachers=[UNet(C, base=4, depth=2)], st_prior=[0.5, 0.5])
    with pytest.raises(ShiftkitError, match="2 shares for 3 classes"):
        m.on_epoch_start(eng)


def test_fda_st_with_teachers_labels_from_their_mean():
    model, m, _, eng = _setup("fda-st", teachers=[UNet(C, base=4, depth=2), UNet(C, base=4, depth=2)])
    m.on_epoch_start(eng)  # teachers: pseudo labels from the start
    assert m.pseudo is not None


def test_bad_options_refused():
    with pytest.raises(ShiftkitError):
        build_seg_method("adaptseg", gan="wgan")
    with pytest.raises(ShiftkitError):
        build_seg_method("advent", lambda_adv_main=-1)
    with pytest.raises(ShiftkitError):
        build_seg_method("fda-st", beta=0.9)
    with pytest.raises(ShiftkitError):
        build_seg_method("minent", no_such_option=1)
    with pytest.raises(ShiftkitError):
        build_seg_method("segformer")


def test_registry_finds_segmentation_methods_by_name():
    from shiftkit.adapt.registry import build_method

    assert build_method("advent").name == "advent"
    assert build_method("minent").name == "minent"
    assert build_method("fda-st").name == "fda-st"
    assert build_method("adaptseg").name == "adaptseg"


def test_ensemble_probs_is_the_mean():
    from shiftkit.adapt.advent import ensemble_probs

    torch.manual_seed(0)
    a, b = UNet(C, base=4, depth=2).eval(), UNet(C, base=4, depth=2).eval()
    x = torch.rand(2, 3, S, S)
    p = ensemble_probs([a, b], x)
    want = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    assert torch.allclose(p, want, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(2, S, S), atol=1e-5)


def test_class_weights_enter_the_supervised_loss():
    from shiftkit.adapt.seg_losses import seg_cross_entropy

    model, m, _, _ = _setup("source-only", class_weights=[0.5, 2.0, 1.0])
    b = _batch()
    loss = m.phases(model, b, StepInfo(0, 0, 4))[0].resolve()["seg"]
    with torch.no_grad():
        z = levels(model, b["source"]["x"])[0]
    assert loss.item() == pytest.approx(seg_cross_entropy(z, b["source"]["y"], weight=torch.tensor([0.5, 2.0, 1.0])).item(), rel=1e-5)
    with pytest.raises(ShiftkitError):
        build_seg_method("minent", class_weights=[1.0, -1.0])


@pytest.mark.parametrize("st_class_weights", [False, True])
def test_fda_st_pseudo_label_loss_is_unweighted_unless_asked(st_class_weights):
    """FDA's self-training CE is plain (the paper); class weights meant for labelled masks apply only on request."""
    from shiftkit.adapt.seg_losses import seg_cross_entropy

    w = torch.tensor([0.5, 2.0, 1.0])
    model, m, _, _ = _setup("fda-st", class_weights=w.tolist(), st_class_weights=st_class_weights, lambda_st=1.0,
                              lambda_ent=0.0)
    m.pseudo = torch.randint(0, C, (6, S, S), dtype=torch.uint8)
    m.pseudo[:, 0, :] = 255
    b = _batch()
    model.eval()  # BatchNorm on running statistics: the target logits do not depend on the batch's source half
    losses = m.phases(model, b, StepInfo(2, 0, 4))[0].resolve()
    assert m.config()["st_class_weights"] is st_class_weights
    with torch.no_grad():
        z = levels(model, b["target"]["x"])[0]
    yt = m.pseudo[b["target"]["index"]].long()
    plain = seg_cross_entropy(z, yt).item()
    weighted = seg_cross_entropy(z, yt, weight=w).item()
    assert plain != pytest.approx(weighted, rel=1e-3)
    assert losses["st"].item() == pytest.approx(weighted if st_class_weights else plain, rel=1e-3)
