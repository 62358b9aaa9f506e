"""DAS3 (source-free segmentation): each loss and label rule against a hand computation on tiny
tensors, the three stage Methods (what they freeze, what they train), bad arguments, and the whole
recipe through `adapt(...)` / `shiftkit adapt --method das3` on a tiny synthetic set."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from shiftkit.adapt.base import StepInfo
from shiftkit.adapt.das3 import (
    Das3,
    Das3Align,
    Das3Propagate,
    Das3SelfTrain,
    bn_adapt_target,
    bn_affine_parameters,
    category_thresholds,
    complementary_cross_entropy,
    focal_entropy_loss,
    image_entropy,
    negative_pseudo_labels,
    parse_stages,
    positive_pseudo_labels,
    smoothed_prior,
    split_easy_hard,
    weighted_diversity_loss,
)
from shiftkit.adapt.seg_losses import minent_loss
from shiftkit.augment.functional import random_photometric
from shiftkit.errors import ShiftkitError
from shiftkit.models.segmentation import UNet

from .conftest import UnlabelledImages

C, S = 2, 16


def _h(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def _two_pixels():
    """(1, 2, 1, 2) logits: pixel A = [2, 0], pixel B = [0, 0]."""
    return torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])


# --- stage 1 losses ------------------------------------------------------------------------------


def test_focal_entropy_against_hand_computation():
    pa = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    ea, eb = _h(pa) / math.log(2), 1.0  # A: e 0.527 < 0.6 (certain), B: uniform (uncertain)
    want = (0.25 * (1 - pa[0]) ** 2 * ea + 0.75 * 0.5**2 * eb) / 2
    got = focal_entropy_loss(_two_pixels(), alpha=0.25, gamma=2.0, certain=0.6)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # with certain 0.5 both pixels are uncertain: weight 1 - alpha on both
    want = 0.75 * ((1 - pa[0]) ** 2 * ea + 0.5**2 * eb) / 2
    assert float(focal_entropy_loss(_two_pixels(), 0.25, 2.0, 0.5)) == pytest.approx(want, rel=1e-5)
    # gamma 0, alpha 0.5: half of ADVENT's MinEnt
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(focal_entropy_loss(z, 0.5, 0.0)) == pytest.approx(0.5 * float(minent_loss(z)), rel=1e-5)


def test_focal_entropy_gradient_lowers_entropy():
    z = torch.tensor([[[[0.5]], [[0.0]], [[-0.2]]]], requires_grad=True)
    loss = focal_entropy_loss(z, 0.5, 2.0)
    loss.backward()
    with torch.no_grad():
        assert float(focal_entropy_loss(z - 0.5 * z.grad, 0.5, 2.0)) < float(loss)
    assert z.grad[0, 0].item() < 0  # the winning class is pushed up


def test_weighted_diversity_against_hand_computation():
    pa = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    q = [(pa[0] + 0.5) / 2, (pa[1] + 0.5) / 2]
    got = weighted_diversity_loss(_two_pixels())
    assert float(got) == pytest.approx(sum(v * math.log(v / 0.5) for v in q), rel=1e-5)
    assert float(got) == pytest.approx(math.log(2) - _h(q), rel=1e-5)  # uniform prior: log C - H(qbar)
    got = weighted_diversity_loss(_two_pixels(), torch.tensor([0.9, 0.1]))
    assert float(got) == pytest.approx(q[0] * math.log(q[0] / 0.9) + q[1] * math.log(q[1] / 0.1), rel=1e-5)
    # zero when the batch's mean prediction equals the prior
    assert float(weighted_diversity_loss(_two_pixels(), torch.tensor(q))) == pytest.approx(0.0, abs=1e-6)


def test_smoothed_prior():
    assert smoothed_prior(torch.tensor([0.8, 0.2, 0.0]), 0.3).tolist() == pytest.approx([0.66, 0.24, 0.1])
    assert smoothed_prior(torch.tensor([2.0, 6.0]), 0.0).tolist() == pytest.approx([0.25, 0.75])


# --- stage 2 labels and loss ---------------------------------------------------------------------


def _probs_1x4(*rows):
    """(N, 2, 1, 4) probabilities from each image's class-1 probabilities."""
    p1 = torch.tensor(rows, dtype=torch.float32)[:, None, None, :]
    return torch.cat([1 - p1, p1], dim=1)


def test_category_thresholds_and_positive_labels_by_hand():
    # image 0: class 1 at conf .9 .8 .6, class 0 at .7; image 1: class 0 at .8 .9, class 1 at .99 .7
    p = _probs_1x4([0.9, 0.8, 0.6, 0.3], [0.2, 0.1, 0.99, 0.7])
    thr = category_thresholds(p, top_k=0.5, cap=0.95)
    # K = ceil(0.5 n): image 0 class 1: 2nd of (.9, .8, .6) = .8; class 0: 1st of (.7); image 1: 1st of each
    assert thr.flatten().tolist() == pytest.approx([0.7, 0.8, 0.9, 0.95])  # .99 capped at .95
    y = positive_pseudo_labels(p, top_k=0.5, cap=0.95)
    assert y[:, 0].tolist() == [[1, 1, 255, 0], [255, 0, 1, 255]]
    # the cap keeps every pixel above it; top_k 1 keeps all
    assert positive_pseudo_labels(p, 0.5, 0.55)[:, 0].tolist() == [[1, 1, 1, 0], [0, 0, 1, 1]]
    assert bool((positive_pseudo_labels(p, 1.0, 1.0) != 255).all())


def test_negative_labels_and_complementary_ce_by_hand():
    z = torch.tensor([3.0, 0.0, -1.0]).view(1, 3, 1, 1).requires_grad_()
    e = [math.exp(3), 1.0, math.exp(-1)]
    p = [v / sum(e) for v in e]  # .9366 .0466 .0172
    neg = negative_pseudo_labels(torch.softmax(z, 1), 0.05)
    assert neg.flatten().tolist() == [False, True, True]
    loss = complementary_cross_entropy(z, neg)
    assert loss.item() == pytest.approx(-(math.log(1 - p[1]) + math.log(1 - p[2])) / 2, rel=1e-5)
    loss.backward()
    assert z.grad[0, 1].item() > 0 and z.grad[0, 2].item() > 0  # negatives pushed down
    # no negative label: 0, still connected to the graph
    z2 = torch.zeros(1, 3, 2, 2, requires_grad=True)
    zero = complementary_cross_entropy(z2, torch.zeros(1, 3, 2, 2, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


# --- stage 3 ranking and ClassMix ----------------------------------------------------------------


def test_image_entropy_and_easy_hard_split():
    p = _probs_1x4([0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.1, 0.1])
    assert image_entropy(p).tolist() == pytest.approx([1.0, _h([0.9, 0.1]) / math.log(2)], rel=1e-5)
    easy = split_easy_hard(torch.tensor([0.5, 0.1, 0.3, 0.9, 0.2]), 0.3)  # round(1.5) = 2 easiest
    assert easy.tolist() == [False, True, False, False, True]
    assert split_easy_hard(torch.tensor([0.2, 0.1]), 0.9).tolist() == [False, True]  # one stays hard
    assert split_easy_hard(torch.tensor([0.3, 0.3, 0.3]), 0.3).tolist() == [True, False, False]  # ties: earlier


def test_loss_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        focal_entropy_loss(_two_pixels(), alpha=1.5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        focal_entropy_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="prior"):
        weighted_diversity_loss(_two_pixels(), torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="top_k"):
        category_thresholds(_probs_1x4([0.5] * 4), top_k=0.0)
    with pytest.raises(ValueError, match="tau"):
        negative_pseudo_labels(_probs_1x4([0.5] * 4), tau=1.0)
    with pytest.raises(ValueError, match="must match"):
        complementary_cross_entropy(_two_pixels(), torch.zeros(1, 3, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="easy_share"):
        split_easy_hard(torch.tensor([0.1, 0.2]), 1.0)


# --- the stage Methods ----------------------------------------------------------------------------


def _setup(method, n=6):
    torch.manual_seed(0)
    model = UNet(C, base=4, depth=2)
    g = torch.Generator().manual_seed(1)
    eng = SimpleNamespace(model=model, net=model, num_classes=C, device=torch.device("cpu"), run=None,
                          streams={"target": UnlabelledImages(torch.rand(n, 3, S, S, generator=g))},
                          cfg=SimpleNamespace(eval_batch_size=4, progress=False))
    method.setup(eng)
    return model, eng


def _batch(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {"target": {"x": torch.rand(n, 3, S, S, generator=g), "index": torch.arange(n)}}


def _step(method, model, batch):
    ph = method.phases(model, batch, StepInfo(0, 0, 4))
    assert len(ph) == 1 and ph[0].groups == ("model",)
    losses = ph[0].resolve()
    sum(losses.values()).backward()
    return losses, ph[0].logs


def test_stage1_freezes_the_classifier_and_trains_the_rest():
    m = Das3Align(alpha=0.5, gamma=2.0)
    model, _ = _setup(m)
    assert m.prior is not None and m.prior.shape == (C,) and float(m.prior.sum()) == pytest.approx(1.0)
    losses, logs = _step(m, model, _batch())
    assert set(losses) == {"fent", "wdiv"} and {"ent", "certain_share"} <= set(logs)
    heads = list(model.classifier.parameters()) + list(model.aux_classifier.parameters())
    assert all(p.grad is None and not p.requires_grad for p in heads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    m2 = Das3Align()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.prior, m.prior)
    m.unfreeze()
    assert all(p.requires_grad for p in heads)


def test_stage1_train_bn_adapts_only_batchnorm_scales_and_shifts():
    """train="bn" (TENT): the trainable set is exactly {gamma, beta} of every BatchNorm outside the heads."""
    m = Das3Align(train="bn")
    model, _ = _setup(m)
    assert m.config()["train"] == "bn" and Das3Align().config()["train"] == "body"
    bns = [x for x in model.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    want = {id(p) for b in bns for p in (b.weight, b.bias)}
    assert want and {id(p) for p in bn_affine_parameters(model)} == want  # the U-Net's heads hold no BatchNorm
    assert {id(p) for p in model.parameters() if p.requires_grad} == want
    n_bn = sum(b.weight.numel() + b.bias.numel() for b in bns)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_bn
    _step(m, model, _batch())
    assert all(p.grad is None for p in model.parameters() if id(p) not in want)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bn_affine_parameters(model))
    m.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    # a head's own BatchNorm is never trained (the heads stay frozen)
    toy = UNet(C, base=4, depth=2)
    toy.classifier = torch.nn.Sequential(toy.classifier, torch.nn.BatchNorm2d(C))
    got = {id(p) for p in bn_affine_parameters(toy)}
    assert got and not got & {id(p) for p in toy.classifier.parameters()}


def test_stage1_hard_prior_is_the_argmax_share_of_the_start_model():
    m = Das3Align(prior_from="hard", prior_smoothing=0.2)
    model, eng = _setup(m)
    x = torch.stack([eng.streams["target"][i]["x"] for i in range(len(eng.streams["target"]))])
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1).flatten()
    share = torch.bincount(pred, minlength=C).double() / pred.numel()
    want = 0.8 * share + 0.2 / C
    assert torch.allclose(m.prior.double(), want / want.sum(), atol=1e-6)
    assert m.config()["prior_from"] == "hard"
    with pytest.raises(ShiftkitError, match="prior_from"):
        Das3Align(prior_from="median")


def test_stage1_bn_adapt_re_estimates_batchnorm_statistics_by_hand():
    """mu = mean over the target batches of the batch means, var = mean of the unbiased batch variances
    (per channel) of each BN layer's input; weights unchanged; bn_adapt=False keeps the start statistics."""
    torch.manual_seed(0)
    start = UNet(C, base=4, depth=2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, S, S, generator=g)
    bn0 = start.backbone.blocks[0][1]  # the first BatchNorm: input = conv0(normalised x)
    for p in start.parameters():  # non-trivial start statistics, so "re-estimated" is visible
        p.requires_grad_(False)
    bn0.running_mean.fill_(5.0)
    bn0.running_var.fill_(9.0)
    conv0 = start.backbone.blocks[0][0]
    h = [conv0((x[i:i + 4] - 0.5) / 0.5) for i in (0, 4)]  # input normalised by (x - 0.5) / 0.5; two batches of 4
    want_mu = torch.stack([b.mean(dim=(0, 2, 3)) for b in h]).mean(0)
    want_var = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for b in h]).mean(0)
    m = Das3Align()
    assert m.bn_adapt is True and m.config()["bn_adapt"] is True
    model = __import__("copy").deepcopy(start)
    eng = SimpleNamespace(model=model, net=model, num_classes=C, device=torch.device("cpu"), run=None,
                          streams={"target": UnlabelledImages(x)}, cfg=SimpleNamespace(eval_batch_size=4, progress=False))
    model.train()
    m.setup(eng)
    assert model.training  # mode restored
    assert torch.allclose(bn0.running_mean, torch.full_like(bn0.running_mean, 5.0))  # the start model is untouched
    got = model.backbone.blocks[0][1]
    assert torch.allclose(got.running_mean, want_mu, atol=1e-5) and torch.allclose(got.running_var, want_var, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), model.parameters(), strict=True))
    # the prior is the hard argmax share of the BN-adapted model (the default prior_from)
    model.eval()
    with torch.no_grad():
        share = torch.bincount(model(x).argmax(1).flatten(), minlength=C).double() / (8 * S * S)
    want = 0.99 * share + 0.01 / C
    assert torch.allclose(m.prior.double(), want / want.sum(), atol=1e-6)
    # bn_adapt=False: statistics stay those of the start model
    off = __import__("copy").deepcopy(start)
    eng.model = eng.net = off
    Das3Align(bn_adapt=False).setup(eng)
    assert torch.equal(off.backbone.blocks[0][1].running_mean, bn0.running_mean)
    # a model without BatchNorm: nothing to re-estimate
    assert bn_adapt_target(eng, torch.nn.Sequential(torch.nn.Conv2d(3, C, 1))) == 0
    # resuming: the checkpoint brings statistics and prior, so setup makes no pass over the target
    resumed = __import__("copy").deepcopy(start)
    eng.model = eng.net = resumed
    eng.resuming = True
    m = Das3Align()
    m.setup(eng)
    assert torch.equal(resumed.backbone.blocks[0][1].running_mean, bn0.running_mean) and m.prior is None


def test_stage2_trains_the_model_against_a_frozen_teacher():
    m = Das3SelfTrain(top_k=0.5, tau=0.3)  # tau 0.3 so a 2-class toy has negatives
    model, _ = _setup(m)
    before = [p.detach().clone() for p in m.teacher.parameters()]
    losses, logs = _step(m, model, _batch())
    assert set(losses) == {"pos", "neg"} and 0.0 < logs["pos_kept"] <= 1.0
    assert all(p.grad is None for p in m.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.teacher.parameters(), strict=True))
    # the step's labels are the teacher's: CE against positive_pseudo_labels(teacher probs)
    b = _batch()
    with torch.no_grad():
        probs = torch.softmax(m.teacher(b["target"]["x"]), 1)
        l2, _ = m.losses(model(b["target"]["x"]), probs)
        y = positive_pseudo_labels(probs, 0.5, 0.9)
        want = torch.nn.functional.cross_entropy(model(b["target"]["x"]), y, ignore_index=255)
    assert float(l2["pos"]) == pytest.approx(float(want), rel=1e-5)


def test_jitter_recolours_what_the_student_sees_only():
    """jitter > 0: each stage's student input is random_photometric(x, jitter) (same global RNG draw); the teacher
    of stages 2-3 labels the unchanged x; jitter 0 feeds x itself."""
    b = _batch()
    x = b["target"]["x"]
    for m in (Das3Align(jitter=0.4), Das3SelfTrain(jitter=0.4), Das3Propagate(jitter=0.4, easy_share=0.5)):
        model, _ = _setup(m)
        seen, taught = [], []
        student = m._logits
        m._logits = lambda net, xx, f=student, got=seen: (got.append(xx.detach().clone()), f(net, xx))[1]
        if m.teacher is not None:
            m.teacher.register_forward_pre_hook(lambda mod, inp, got=taught: got.append(inp[0].detach().clone()))
        assert m.config()["jitter"] == 0.4
        torch.manual_seed(7)
        _step(m, model, b)
        if isinstance(m, Das3Propagate):  # the student input is the easy/ClassMixed batch, recoloured
            assert torch.equal(taught[0], x) and seen[0].shape == x.shape and not torch.equal(seen[0], x)
            continue
        if taught:
            assert torch.equal(taught[0], x)
        torch.manual_seed(7)
        assert torch.equal(seen[0], random_photometric(x, 0.4))
    assert Das3SelfTrain().jitter == Das3Propagate().jitter == 0.3 and Das3Align().jitter == 0.0  # the defaults
    m = Das3SelfTrain(jitter=0)
    model, _ = _setup(m)
    seen = []
    student = m._logits
    m._logits = lambda net, xx, f=student: (seen.append(xx), f(net, xx))[1]
    _step(m, model, b)
    assert seen[0] is x and m.config()["jitter"] == 0.0


def test_stage3_split_classmix_and_losses():
    m = Das3Propagate(easy_share=0.3)
    model, eng = _setup(m, n=6)
    assert int(m.easy.sum()) == 2  # round(0.3 * 6)
    # the easy images are the ones of lowest mean teacher entropy
    with torch.no_grad():
        ent = image_entropy(torch.softmax(m.teacher(eng.streams["target"].x), 1))
    assert set(torch.nonzero(m.easy).flatten().tolist()) == set(torch.argsort(ent)[:2].tolist())
    # make_batch: easy images keep their argmax labels; each mixed image is pixel-wise a or b
    x = _batch(4)["target"]["x"]
    with torch.no_grad():
        probs = torch.softmax(m.teacher(x), 1)
    easy = torch.tensor([True, False, False, False])
    torch.manual_seed(3)
    parts = m.make_batch(x, probs, easy)
    assert torch.equal(parts["easy"][1], probs[:1].argmax(1)) and parts["mixed"] == 3
    xh, yh = parts["hard"]
    y_hard = positive_pseudo_labels(probs, 0.5, 0.9)
    for pos, b in enumerate([1, 2, 3]):
        a = [1, 2, 3][(pos + 1) % 3]  # hard images mixed in turn with the next hard one
        from_a = (yh[pos] == y_hard[a]) & (xh[pos] == x[a]).all(0)
        from_b = (yh[pos] == y_hard[b]) & (xh[pos] == x[b]).all(0)
        assert bool((from_a | from_b).all())
    losses, logs = _step(m, model, _batch(4))
    assert set(losses) <= {"easy", "mix"} and losses and logs["mixed"] >= 0
    m2 = Das3Propagate()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.easy, m.easy)


def test_stage_and_recipe_bad_arguments():
    for make, match in [
        (lambda: Das3Align(alpha=2), "alpha"), (lambda: Das3Align(gamma=-1), "gamma"),
        (lambda: Das3Align(lambda_div=-1), "lambda_div"), (lambda: Das3Align(bn_adapt="yes"), "bn_adapt"),
        (lambda: Das3Align(train="all"), "train must be one of body, bn"),
        (lambda: Das3SelfTrain(top_k=0), "top_k"), (lambda: Das3SelfTrain(jitter=2), "jitter"),
        (lambda: Das3Propagate(jitter="strong"), "jitter"),
        (lambda: Das3SelfTrain(tau=1.0), "tau"), (lambda: Das3SelfTrain(lambda_pos=0, lambda_neg=0), "both 0"),
        (lambda: Das3Propagate(easy_share=1.0), "easy_share"), (lambda: Das3Propagate(mix_from="x"), "mix_from"),
        (lambda: parse_stages("1,4"), "among 1, 2, 3"), (lambda: parse_stages("a"), "numbers"),
        (lambda: Das3(stage2={"bogus": 1}), "bad option for das3 stage 2"),
    ]:
        with pytest.raises(ShiftkitError, match=match) as e:
            make()
        assert "\n" not in str(e.value)
    assert parse_stages("3, 1") == (1, 3) and parse_stages(2) == (2,)
    with pytest.raises(ShiftkitError, match="not a segmentation model"):
        Das3Align().freeze(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)))


# --- the recipe end to end -----------------------------------------------------------------------

FAST = {"epochs": 1, "batch_size": 4, "size": S, "iters_per_epoch": 2, "device": "cpu", "progress": False, "log_every": 1,
        "seed": 0, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def das3_run(tmp_path_factory, seg_folder):
    from shiftkit.adapt.sourcefree import adapt

    root = tmp_path_factory.mktemp("das3")
    target, test = seg_folder(root / "t", 8, 1, 0.15), seg_folder(root / "tt", 4, 2, 0.15)
    torch.manual_seed(0)
    model = UNet(C, base=4, depth=2)
    model.classes = ["background", "square"]
    head = [p.detach().clone() for p in model.classifier.parameters()]
    out = root / "run"
    r = adapt(model, target, method="das3", target_test=test, out=out, **FAST)
    return SimpleNamespace(r=r, out=out, target=target, test=test, model=model, head=head)


def test_adapt_runs_all_three_stages(das3_run):
    r, out = das3_run.r, das3_run.out
    assert r["method"] == "das3" and r["uses_target_labels"] is False and r["select"] == "label-free"
    assert [r["stages"][k]["status"] for k in "123"] == ["ran"] * 3
    for k in "123":
        d = out / f"stage{k}"
        for name in ("config.json", "log.jsonl", "metrics.json", "checkpoints/best.safetensors", "checkpoints/last.safetensors"):
            assert (d / name).is_file(), f"stage{k}/{name}"
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["source"] is None and cfg["task"] == "segmentation" and cfg["select"] == "label-free"
        assert 0.0 <= r["stages"][k]["selected"]["target_test_miou"] <= 1.0
    assert 0.0 <= r["target_test_miou"] <= 1.0 and r["checkpoint"].endswith("stage3/checkpoints/best.safetensors")
    assert json.loads((out / "metrics.json").read_text())["stages"]["3"]["status"] == "ran"
    steps = [json.loads(s) for k in "123" for s in (out / f"stage{k}" / "log.jsonl").read_text().splitlines()]
    keys = set().union(*[s.keys() for s in steps if s.get("event") == "step"])
    assert {"fent", "wdiv", "pos", "neg", "mix"} <= keys
    assert any(s.get("event") == "das3_prior" for s in steps) and any(s.get("event") == "das3_split" for s in steps)
    # stage 1 kept the classifier as it was; the checkpoint rebuilds with the model's classes
    from shiftkit.train import checkpoint as ckpt

    m1, info, _ = ckpt.load_model(out / "stage1" / "checkpoints" / "best.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(das3_run.head, m1.classifier.parameters(), strict=True))
    assert info["classes"] == ["background", "square"]
    assert all(p.requires_grad for p in das3_run.model.parameters())  # the caller's model is left unfrozen


def test_rerun_reuses_finished_stages_and_resumes_an_interrupted_one(das3_run):
    from shiftkit.adapt.sourcefree import adapt

    out = das3_run.out
    with pytest.raises(ShiftkitError, match="already ran"):
        adapt(das3_run.model, das3_run.target, method="das3", out=out, **FAST)
    (out / "stage3" / "metrics.json").unlink()  # stage 3 "interrupted" after its last checkpoint
    r = adapt(das3_run.model, das3_run.target, method="das3", target_test=das3_run.test, out=out, resume=True, **FAST)
    assert [r["stages"][k]["status"] for k in "123"] == ["reused", "reused", "resumed"]
    assert (out / "stage3" / "metrics.json").is_file()
    assert r["target_test_miou"] == pytest.approx(das3_run.r["target_test_miou"])
    # the resumed stage's time counts its epoch from before the "kill" (epochs_s), not only this invocation
    before = das3_run.r["stages"]["3"]["epochs_s"]
    assert before > 0 and r["stages"]["3"]["epochs_s"] == pytest.approx(before, abs=1e-3)
    # a stage is only reused after the same earlier stages; stale later stages are refused up front
    with pytest.raises(ShiftkitError, match=r"started from stages \[1\], not \[\]"):
        adapt(das3_run.model, das3_run.target, method="das3", method_options={"stages": "2,3"}, out=out, resume=True, **FAST)
    import shutil

    shutil.rmtree(out / "stage1")
    with pytest.raises(ShiftkitError, match="before stage 1"):
        adapt(das3_run.model, das3_run.target, method="das3", out=out, resume=True, **FAST)
    assert not (out / "stage1").exists()


def test_adapt_refuses_source_and_unknown_settings(tmp_path, das3_run):
    from shiftkit.adapt.sourcefree import adapt

    with pytest.raises(ShiftkitError, match="no source"):
        adapt(das3_run.model, das3_run.target, method="das3", out=tmp_path / "x", source="somewhere")
    with pytest.raises(ShiftkitError, match="unknown adapt"):
        adapt(das3_run.model, das3_run.target, method="das3", out=tmp_path / "x", epoch=1)
    with pytest.raises(ShiftkitError, match="bad option for method das3"):
        adapt(das3_run.model, das3_run.target, method="das3", out=tmp_path / "x", method_options={"stage9": {}})


def test_cli_das3_runs_chosen_stages(tmp_path, das3_run, capsys):
    from shiftkit.cli import main

    ckpt = das3_run.out / "stage2" / "checkpoints" / "best.safetensors"
    rc = main(["adapt", "--model", str(ckpt), "--target", str(das3_run.target), "--target-test", str(das3_run.test),
               "--method", "das3", "--stages", "3", "--epochs", "1", "--batch-size", "4", "--iters-per-epoch", "2",
               "--easy-share", "0.5", "--out", str(tmp_path / "cli"), "--no-progress", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert [r["stages"][k]["status"] for k in "123"] == ["left out", "left out", "ran"]
    cfg = json.loads((tmp_path / "cli" / "stage3" / "config.json").read_text())
    assert cfg["size"] == S and cfg["resolved"]["method"]["easy_share"] == 0.5  # size read from the checkpoint
    assert not (tmp_path / "cli" / "stage1").exists()
    rc = main(["adapt", "--model", str(ckpt), "--target", str(das3_run.target), "--method", "das3", "--stages", "1",
               "--epochs", "1", "--batch-size", "4", "--iters-per-epoch", "2", "--no-bn-adapt", "--prior-from", "soft",
               "--prior-smoothing", "0.2", "--train-params", "bn", "--align-jitter", "0.2", "--jitter", "0.1",
               "--out", str(tmp_path / "cli1"), "--no-progress", "--json"])
    assert rc == 0
    capsys.readouterr()
    cfg = json.loads((tmp_path / "cli1" / "stage1" / "config.json").read_text())["resolved"]["method"]
    assert (cfg["bn_adapt"], cfg["prior_from"], cfg["prior_smoothing"]) == (False, "soft", 0.2)
    assert (cfg["train"], cfg["jitter"]) == ("bn", 0.2)
    assert json.loads((tmp_path / "cli1" / "metrics.json").read_text())["config"]["stage_methods"]["2"]["jitter"] == 0.1
    assert main(["adapt", "--model", str(ckpt), "--target", str(das3_run.target), "--method", "das3", "--stages", "5",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--stages" in capsys.readouterr().err
