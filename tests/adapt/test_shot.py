"""SHOT: centroid pseudo labels on toys with known answers, the loss against hand computations,
the frozen head, and a tiny source-free run through the engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from shiftkit.adapt.shot import (
    Shot,
    ShotDistill,
    ShotSelfTrain,
    balanced_assignment,
    centroid_pseudo_labels,
    cutout,
    fresh_copy,
    neighbour_vote,
    pretrained_backbone_weights,
    random_affine,
    shot_loss,
)
from shiftkit.data import Sample, Task
from shiftkit.errors import ShiftkitError
from shiftkit.models.ccexam import build


def test_centroids_fix_a_wrong_prediction_on_a_2d_toy():
    # two clusters, around the x axis and the y axis; the third x-point is predicted wrongly
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.1], [0.0, 1.0], [0.1, 0.9], [0.1, 1.0]])
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]])
    labels, cents = centroid_pseudo_labels(f, p)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert cents.shape == (2, 3)  # bias column


def test_soft_centroids_match_the_formula():
    f = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    p = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    _, c = centroid_pseudo_labels(f, p, rounds=0)
    a = np.array([3, 4, 1]) / math.sqrt(26)  # [f, 1] / ||[f, 1]||
    b = np.array([0, 2, 1]) / math.sqrt(5)
    c0 = (0.75 * a + 0.5 * b) / 1.25
    c1 = (0.25 * a + 0.5 * b) / 0.75
    assert np.allclose(c.numpy(), np.stack([c0, c1]), atol=1e-6)
    # without the bias column, plain L2-normalised features
    _, c = centroid_pseudo_labels(f, p, rounds=0, bias=False)
    assert np.allclose(c[0].numpy(), (0.75 * np.array([0.6, 0.8]) + 0.5 * np.array([0, 1])) / 1.25, atol=1e-6)


def test_refinement_round_and_labelset():
    # class 2 is never the argmax: it cannot be a pseudo label, even for a point near its centroid
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    p = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.4, 0.25, 0.35]])
    labels, _ = centroid_pseudo_labels(f, p, rounds=1)
    assert 2 not in labels.tolist()
    # hard-label round: a point whose soft assignment is ambiguous goes to the nearer hard centroid
    f = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0], [0.95, 0.3]])
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.45, 0.55]])
    labels, _ = centroid_pseudo_labels(f, p, rounds=1)
    assert labels.tolist() == [0, 0, 1, 1, 0]


def test_balanced_assignment_gives_equal_shares_by_cost_margin():
    # every sample is nearer class 0; equal shares send the two with the smallest margin
    # cost_1 - cost_0 (0.3 and 0.2, samples 1 and 2) to class 1
    cost = torch.tensor([[0.1, 0.9], [0.2, 0.5], [0.1, 0.3], [0.0, 1.0]])
    assert cost.argmin(1).tolist() == [0, 0, 0, 0]
    assert balanced_assignment(cost).tolist() == [0, 1, 1, 0]
    # already balanced nearest-centroid labels are kept
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.8, 0.1]])
    assert balanced_assignment(cost).tolist() == cost.argmin(1).tolist()


def test_balanced_centroid_labels_fix_a_swallowed_cluster():
    # three points of class 1 lie between the clusters, a little nearer class 0's centroid
    f = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.2], [0.6, 0.5], [0.6, 0.45], [0.0, 1.0]])
    p = torch.tensor([[0.9, 0.1]] * 5 + [[0.1, 0.9]])
    plain, _ = centroid_pseudo_labels(f, p, rounds=0, bias=False)
    fair, _ = centroid_pseudo_labels(f, p, rounds=0, bias=False, balanced=True)
    assert torch.bincount(plain, minlength=2).tolist() != [3, 3]
    assert torch.bincount(fair, minlength=2).tolist() == [3, 3]
    assert fair.tolist() == [0, 0, 0, 1, 1, 1]


def test_balanced_assignment_bad_arguments():
    with pytest.raises(ValueError, match="cost"):
        balanced_assignment(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="epsilon"):
        balanced_assignment(torch.zeros(3, 2), epsilon=0)


def test_centroid_bad_arguments():
    with pytest.raises(ValueError, match="features"):
        centroid_pseudo_labels(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="rounds"):
        centroid_pseudo_labels(torch.zeros(3, 2), torch.full((3, 2), 0.5), rounds=-1)


def test_shot_loss_against_hand_computation():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = [[math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)], [1 / (1 + math.e), math.e / (1 + math.e)]]
    h = [-sum(q * math.log(q) for q in row) for row in p]
    mean = [(p[0][k] + p[1][k]) / 2 for k in range(2)]
    ent, div = sum(h) / 2, -sum(q * math.log(q) for q in mean)
    ce = (-math.log(p[0][0]) - math.log(p[1][0])) / 2
    total, parts = shot_loss(z, y, beta=0.3)
    assert math.isclose(float(total), ent - div + 0.3 * ce, rel_tol=1e-5)
    assert math.isclose(float(parts["ent"]), ent, rel_tol=1e-5) and math.isclose(float(parts["div"]), div, rel_tol=1e-5)
    total, _ = shot_loss(z, None, beta=0.3)  # no pseudo labels: IM only
    assert math.isclose(float(total), ent - div, rel_tol=1e-5)


def test_method_freezes_the_head_and_trains_the_features():
    torch.manual_seed(0)
    model = build("mnist_net", input_size=8)
    shot = Shot()
    shot.freeze_head(model)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        f, z = model.forward_features(x)
    shot.relabel(f, torch.softmax(z, 1), torch.arange(6), 6)
    assert shot.pseudo_labels.shape == (6,)
    shot.pseudo_labels[0] = -1  # an unreadable image: ignored by the CE
    _, logits = model.forward_features(x)
    losses, logs = shot.losses(logits, torch.arange(6))
    assert set(losses) == {"im", "pl"} and {"ent", "div"} <= set(logs)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.feature_parameters())


def test_method_bad_arguments():
    with pytest.raises(ShiftkitError, match=">= 0"):
        Shot(beta=-1)
    with pytest.raises(ShiftkitError, match="head"):
        Shot().freeze_head(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        Shot().losses(torch.zeros(2, 3, requires_grad=True), torch.arange(2))


def test_pre_relu_features_and_no_feature_dropout():
    """The clustered features are the bottleneck's pre-ReLU output (the official code clusters netB's
    Linear+BN output); the feature path's dropout is off while adapting, the head stays frozen/eval."""
    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=3)
    shot = Shot()
    shot.freeze_head(model)
    relu = shot.pre_activation_module(model)
    assert relu is model.classifier[2]
    x = torch.rand(5, 3, 8, 8)

    class _Eng:  # what on_epoch_start asks of the engine
        def __init__(self, m):
            self.model = m

        def infer(self, stream):
            self.model.eval()
            with torch.no_grad():
                f, z = self.model.forward_features(x)
            return {"features": f, "probs": torch.softmax(z, 1), "index": torch.arange(5)}

        def stream_size(self, stream):
            return 5

    seen = {}
    orig = shot.relabel
    shot.relabel = lambda f, p, i, n: seen.setdefault("f", f) is not None and orig(f, p, i, n)
    shot.on_epoch_start(_Eng(model))
    model.eval()
    with torch.no_grad():
        pre = model.classifier[1](model.features(model.prepare(x)).flatten(1))
    assert torch.allclose(seen["f"], pre, atol=1e-5) and (pre < 0).any()  # not the ReLU output
    assert shot.pseudo_labels.shape == (5,)
    assert not relu._forward_pre_hooks  # the hook is removed
    model.train()
    shot.set_train_modes(model)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and not any(m.training for m in drops) and not any(m.training for m in model.head)
    assert model.features[0][1].training  # batch norm still adapts its statistics
    Shot(feature_dropout=True).set_train_modes(model.train())
    assert model.classifier[0].training
    out = Shot(cluster_features="output")
    assert out.config()["cluster_features"] == "output"
    with pytest.raises(ShiftkitError, match="cluster_features"):
        Shot(cluster_features="conv")


class _Digits:
    """In-memory dataset: bright top (class 0) or bright bottom (class 1) 8x8 images."""

    def __init__(self, n: int, seed: int, labeled: bool, shift: float = 0.0):
        rng = np.random.default_rng(seed)
        self.y = np.arange(n) % 2
        imgs = rng.normal(0.3 + shift, 0.1, (n, 8, 8))
        for i, c in enumerate(self.y):
            imgs[i, slice(0, 4) if c == 0 else slice(4, 8)] += 0.5
        self.images = (np.clip(imgs, 0, 1) * 255).astype(np.uint8)
        self.task = Task.CLASSIFICATION if labeled else Task.UNLABELED
        self.classes = ["0", "1"] if labeled else []
        self.labeled = labeled

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Sample(self.images[i], int(self.y[i]) if self.labeled else None, f"{i}.png")

    def labels(self):
        return self.y.tolist()

    def paths(self):
        return [f"{i}.png" for i in range(len(self))]


def test_tiny_source_free_run_through_the_engine(tmp_path):
    from shiftkit.adapt.sourcefree import adapt

    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=2)
    head_before = [p.detach().clone() for p in model.head.parameters()]
    body_before = [p.detach().clone() for p in model.feature_parameters()]
    out = tmp_path / "run"
    m = adapt(model, _Digits(24, 1, False, 0.2), target_test=_Digits(12, 2, True, 0.2), out=out,
              epochs=2, batch_size=8, seed=0, device="cpu", progress=False, log_every=1)
    assert m["method"] == "shot" and m["select"] == "label-free" and m["uses_target_labels"] is False
    assert 0.0 <= m["target_test_accuracy"] <= 1.0 and m["selected_epoch"] in (0, 1)
    for name in ("config.json", "log.jsonl", "metrics.json", "checkpoints/best.safetensors", "checkpoints/last.safetensors"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"] is None and cfg["optimizer"] == "sgd" and cfg["schedule"] == "dann"
    assert all(torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(body_before, model.feature_parameters(), strict=True))
    # the checkpoint rebuilds the ccexam architecture with no flags
    from shiftkit.models.ccexam import load_model

    again = load_model(out / "checkpoints" / "best.safetensors")
    assert again.spec == model.spec and again.classes == ["0", "1"]


def test_adapt_refuses_source_arguments_and_das3(tmp_path):
    from shiftkit.adapt.sourcefree import adapt

    with pytest.raises(ShiftkitError, match="no source"):
        adapt(build("mnist_net", input_size=8), _Digits(8, 0, False), out=tmp_path / "x", source="somewhere")
    with pytest.raises(ShiftkitError, match="das3 adapts segmentation models"):  # a classifier: use shot
        adapt(build("mnist_net", input_size=8), _Digits(8, 0, False), out=tmp_path / "x", method="das3")
    assert not (tmp_path / "x").exists()


def _png_folder(root, n: int, labeled: bool):
    from PIL import Image

    ds = _Digits(n, 3, labeled, 0.1)
    for i in range(n):
        d = root / str(ds.y[i]) if labeled else root
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.kron(ds.images[i], np.ones((2, 2), np.uint8))).save(d / f"{i}.png")  # 16x16
    return root


def test_cli_adapt_state_dict_with_arch(tmp_path, capsys):
    from shiftkit.cli import main

    torch.manual_seed(0)
    pth = tmp_path / "usps.pth"
    torch.save(build("usps_net").state_dict(), pth)
    target, test = _png_folder(tmp_path / "t", 16, False), _png_folder(tmp_path / "tt", 8, True)
    rc = main(["adapt", "--model", str(pth), "--arch", "usps_net", "--target", str(target), "--target-test", str(test),
               "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--no-progress", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "shot" and "target_test_accuracy" in r and r["uses_target_labels"] is False
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
    # balanced labels and the self-training stage: OUT/selftrain from SHOT's choice, both in the JSON
    rc = main(["adapt", "--model", str(pth), "--arch", "usps_net", "--target", str(target), "--target-test", str(test),
               "--out", str(tmp_path / "run2"), "--epochs", "1", "--batch-size", "8", "--balanced-labels",
               "--selftrain-epochs", "2", "--amp", "on", "--channels-last", "--no-progress", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config["resolved"]["method"]["balanced_labels"] is True
    for stage in ("run2", "run2/selftrain"):  # both stages ran under bfloat16 autocast, channels-last
        c = json.loads((tmp_path / stage / "config.json").read_text())
        assert c["resolved"]["amp"] == "bfloat16" and c["channels_last"] is True
    assert r["selftrain"]["method"] == "shot_selftrain" and "target_test_accuracy" in r["selftrain"]
    assert (tmp_path / "run2" / "selftrain" / "checkpoints" / "best.safetensors").is_file()
    for flag, value in (("--selftrain-epochs", "-1"), ("--distill-epochs", "-2"), ("--distill-fraction", "1.5")):
        assert main(["adapt", "--model", str(pth), "--arch", "usps_net", "--target", str(target),
                     "--out", str(tmp_path / "r3"), flag, value]) == 2
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()  # refused before any stage ran
    # the distillation stage after SHOT: OUT/distill, a fresh student, its figures in the text output
    rc = main(["adapt", "--model", str(pth), "--arch", "usps_net", "--target", str(target), "--target-test", str(test),
               "--out", str(tmp_path / "run4"), "--epochs", "1", "--batch-size", "8", "--distill-epochs", "1",
               "--distill-batch-size", "8", "--amp", "on", "--channels-last", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "shot_distill (source-free)" in text and str(tmp_path / "run4" / "distill") in text
    c = json.loads((tmp_path / "run4" / "distill" / "config.json").read_text())
    assert c["schedule"] == "cosine" and c["batch_size"] == 8 and c["resolved"]["method"]["fraction"] == 0.8
    # no architecture for a plain state_dict: one-line error, exit 2
    assert main(["adapt", "--model", str(pth), "--target", str(target), "--out", str(tmp_path / "r2")]) == 2
    assert "--arch" in capsys.readouterr().err


def test_cli_has_no_source_option_and_takes_das3(tmp_path, capsys):
    from shiftkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["adapt", "--model", "m.pth", "--source", "s", "--target", "t", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--source" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["adapt", "--model", "m.pth", "--source", "s", "--target", "t", "--method", "das3", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--source" in capsys.readouterr().err
    assert main(["adapt", "--model", "m.pth", "--target", "t", "--method", "das3", "--out", str(tmp_path / "o")]) == 2
    assert "--arch" in capsys.readouterr().err  # das3 is known: the error is about the model file


def test_selftrain_confident_labels_and_augmentation():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.05, 0.95]])
    # class 0 predicted 3 times (keep the most certain 2 of 3 at fraction 0.5 -> round(1.5) = 2), class 1 twice (1)
    assert ShotSelfTrain.confident_labels(probs, 0.5).tolist() == [0, -1, 0, -1, 1]
    assert ShotSelfTrain.confident_labels(probs, 1.0).tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ShiftkitError, match="confident_fraction"):
        ShotSelfTrain(confident_fraction=0)
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = random_affine(x)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.allclose(random_affine(x, degrees=0, scale=0, translate=0), x, atol=1e-5)


def test_cutout_zeroes_one_square_per_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 10, 12) + 0.5  # no zeros before
    y = cutout(x, 4)
    assert y.shape == x.shape and y.dtype == x.dtype
    zeroed = (y == 0)
    assert torch.equal(zeroed[:, 0], zeroed[:, 1]) and torch.equal(zeroed[:, 0], zeroed[:, 2])  # all channels alike
    assert torch.equal(y[~zeroed], x[~zeroed])
    for m in zeroed[:, 0]:  # one axis-aligned box per image, at most 4 x 4, clipped by the edges
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(m.sum()) == len(rows) * len(cols)
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1)) and cols.tolist() == list(range(cols[0], cols[-1] + 1))
    full = zeroed[:, 0].flatten(1).sum(1) == 16
    assert 0.2 < full.float().mean() < 0.8  # some squares whole, some hang over an edge
    assert torch.equal(cutout(x, 0), x)
    with pytest.raises(ShiftkitError, match="cutout"):
        ShotSelfTrain(cutout=-1)
    method = ShotSelfTrain(cutout=4, augment=False)
    assert method.config()["cutout"] == 4 and int((method.strong_view(x) == 0).sum()) > 0


def test_selftrain_run_through_the_engine(tmp_path):
    from shiftkit.adapt.sourcefree import adapt

    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=2)
    head_before = [p.detach().clone() for p in model.head.parameters()]
    method = ShotSelfTrain(confident_fraction=0.5, relabel="once", consistency_weight=0.0, train_head=False)
    m = adapt(model, _Digits(24, 1, False, 0.2), method=method, out=tmp_path / "st",
              epochs=2, batch_size=8, seed=0, device="cpu", progress=False)
    assert m["method"] == "shot_selftrain" and m["uses_target_labels"] is False
    labels = method.pseudo_labels
    assert labels.shape == (24,) and int((labels >= 0).sum()) in range(10, 15)  # about half kept
    assert all(torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_selftrain_fraction_schedule_and_bad_arguments():
    grow = ShotSelfTrain()  # the defaults: B4's schedule
    assert [round(grow.fraction_at(e, 4), 6) for e in range(4)] == [0.3, 0.5, 0.7, 0.9]
    assert ShotSelfTrain(confident_fraction=0.3, final_fraction=0.9, relabel="once").fraction_at(3, 4) == 0.3
    for kwargs, word in (({"final_fraction": 1.5}, "final_fraction"), ({"relabel": "step"}, "relabel"),
                         ({"tau": 0}, "tau"), ({"consistency_weight": -1}, "consistency_weight")):
        with pytest.raises(ShiftkitError, match=word):
            ShotSelfTrain(**kwargs)


class _Identity(torch.nn.Module):
    """net(x) = (x, x): the 'image' is its own logits, so the step's losses are hand-computable."""

    def forward(self, x):
        return x, x


def test_selftrain_consistency_term_against_hand_computation():
    method = ShotSelfTrain(ce_weight=1.0, im_weight=0.0, consistency_weight=2.0, tau=0.8, augment=False)
    method.pseudo_labels = torch.tensor([1, -1, -1])
    x = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.2, 0.0]])  # sample 1 confident (p = 0.953), sample 2 not (0.55)
    phase = method.phases(_Identity(), {"target": {"x": x, "index": torch.tensor([0, 1, 2])}}, None)[0]
    log_p = torch.log_softmax(x, 1)
    assert torch.isclose(phase.losses["pl"], -log_p[0, 1])  # labelled sample only
    assert torch.isclose(phase.losses["consistency"], 2.0 * (-log_p[1, 0]) / 3)  # one confident guess, mean over 3


def test_selftrain_relabels_every_epoch_with_a_growing_share(tmp_path):
    from shiftkit.adapt.sourcefree import adapt

    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=2)
    method = ShotSelfTrain(confident_fraction=0.25, final_fraction=1.0, relabel="epoch", consistency_weight=1.0,
                           train_head=True)
    head_before = [p.detach().clone() for p in model.head.parameters()]
    adapt(model, _Digits(24, 1, False, 0.2), method=method, out=tmp_path / "st",
          epochs=2, batch_size=8, seed=0, device="cpu", progress=False)
    assert method.labels_epoch == 1 and int((method.pseudo_labels >= 0).sum()) == 24  # the last epoch labels every image
    assert not all(torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))  # the head trained
    assert int(method.state_dict()["labels_epoch"]) == 1


def test_selftrain_killed_mid_epoch_resumes_like_an_uninterrupted_run(tmp_path, kill_at, same_last_weights):
    """The resumed epoch keeps the labels it started with (not relabelled by the half-trained model)."""
    from shiftkit.adapt.sourcefree import SHOT_DEFAULTS, SourceFreeEngine
    from shiftkit.train.engine import TrainConfig

    target = _Digits(24, 1, False, 0.2)  # one object: --resume checks the settings are the same

    def run(out, hooks=None, resume=False):
        torch.manual_seed(0)
        model = build("svhn_net", input_size=8, num_classes=2)
        cfg = TrainConfig(source=None, target=target, out=str(out), method="shot_selftrain",
                          **{**SHOT_DEFAULTS, "select": "label-free", "epochs": 2, "batch_size": 8, "seed": 0,
                             "device": "cpu", "progress": False, "ckpt_every": 1, "resume": resume})
        method = ShotSelfTrain(confident_fraction=0.25, final_fraction=1.0)
        return SourceFreeEngine(cfg, model=model, method=method, hooks=hooks).run_training(), method

    _, method_a = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", hooks={"step_end": kill_at(4)})  # 3 steps per epoch: killed inside epoch 2
    _, method_b = run(tmp_path / "b", resume=True)
    assert torch.equal(method_a.pseudo_labels, method_b.pseudo_labels) and method_b.labels_epoch == 1
    same_last_weights(tmp_path / "a", tmp_path / "b")


def test_neighbour_vote_against_hand_computation():
    # four points on a line in 2-D: each one's 2 nearest by cosine are its angular neighbours
    angles = torch.tensor([0.0, 0.1, 0.3, 1.4])
    f = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]])  # norms do not matter
    p = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.2, 0.8], [0.0, 1.0]])
    v = neighbour_vote(f, p, k=2, chunk=3)  # chunks of 3 rows: the self-exclusion offset is exercised
    expected = torch.stack([(p[1] + p[2]) / 2, (p[0] + p[2]) / 2, (p[1] + p[0]) / 2, (p[2] + p[1]) / 2])
    assert torch.allclose(v, expected)
    # point 1, wrongly labelled among three right neighbours, takes their class
    p2 = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    assert neighbour_vote(f[:4], p2, k=1).argmax(1)[1] == 0
    assert torch.allclose(neighbour_vote(f.bfloat16(), p, k=2), expected, atol=1e-6)  # bfloat16 similarity, same picks
    with pytest.raises(ValueError, match="k must be"):
        neighbour_vote(f, p, k=4)
    with pytest.raises(ValueError, match="expected"):
        neighbour_vote(f[:3], p, k=1)
    with pytest.raises(ShiftkitError, match="neighbours"):
        ShotSelfTrain(neighbours=-1)


def test_selftrain_labels_from_neighbours_through_the_engine(tmp_path):
    from shiftkit.adapt.sourcefree import adapt

    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=2)
    method = ShotSelfTrain(confident_fraction=1.0, final_fraction=1.0, neighbours=3, consistency_weight=0.0)
    seen = {}
    original = method.label_probs

    def spy(engine):
        r = original(engine)
        seen["own"], seen["voted"], seen["amp"] = engine.infer("target")["probs"], r["probs"], engine.use_amp
        return r

    method.label_probs = spy
    m = adapt(model, _Digits(24, 1, False, 0.2), method=method, out=tmp_path / "nb", epochs=1, batch_size=8, seed=0,
              device="cpu", progress=False, amp="on")
    assert m["method"] == "shot_selftrain" and seen["amp"] is True
    assert seen["voted"].shape == seen["own"].shape and torch.allclose(seen["voted"].sum(1), torch.ones(24), atol=1e-4)
    assert not torch.allclose(seen["voted"], seen["own"])  # labels came from the neighbours, not the image itself
    assert method.pseudo_labels.tolist() == seen["voted"].argmax(1).tolist()  # fraction 1: every image labelled


def test_fresh_copy_reinitialises_every_layer_from_its_seed():
    torch.manual_seed(0)
    model = build("svhn_net", input_size=8, num_classes=2).requires_grad_(False)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)
    state = torch.get_rng_state()
    fresh = fresh_copy(model, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert fresh.spec == model.spec and fresh.classes == model.classes
    assert all(p.requires_grad for p in fresh.parameters()) and not any(p.requires_grad for p in model.parameters())
    weights = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    old, new = dict(model.named_parameters()), dict(fresh.named_parameters())
    assert weights and all(not torch.equal(old[n], new[n]) for n in weights)
    assert float(next(m for m in fresh.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.abs().max()) == 0
    again, other = fresh_copy(model, seed=3), fresh_copy(model, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), other.state_dict().values(), strict=True))


def test_fresh_copy_of_a_pretrained_classifier_gets_its_pretrained_backbone_back(tmp_path):
    from shiftkit.models import Classifier, create_backbone

    torch.manual_seed(0)
    weights = tmp_path / "small_cnn.pt"
    torch.save(create_backbone("small_cnn").state_dict(), weights)  # stands in for ImageNet weights
    teacher = Classifier(create_backbone("small_cnn", weights=weights), num_classes=3)
    teacher.classes = ["a", "b", "c"]
    pretrained = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    with torch.no_grad():  # the teacher then learns: every weight moves
        for p in teacher.parameters():
            p.add_(0.5)
    assert pretrained_backbone_weights(teacher) == str(weights)
    student = fresh_copy(teacher, seed=2)
    assert student.classes == ["a", "b", "c"] and student.spec == teacher.spec
    for k, v in student.backbone.state_dict().items():  # the backbone as pretrained, not as the teacher left it
        assert torch.equal(v, pretrained[k]), k
    t_head, s_head = dict(teacher.named_parameters()), dict(student.named_parameters())
    assert all(not torch.equal(t_head[n], s_head[n]) for n in s_head if not n.startswith("backbone."))
    again = fresh_copy(teacher, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values(), strict=True))
    assert pretrained_backbone_weights(build("svhn_net")) is None  # a ccexam network: plain re-initialisation


class _FlatLogits(torch.nn.Module):
    """net(x) = (x, x flattened): a (N, C, 1, 1) 'image' is its own logits."""

    def forward(self, x):
        return x, x.flatten(1)


def test_distill_loss_against_hand_computation():
    method = ShotDistill(_FlatLogits(), label_smoothing=0.1, degrees=0.0, scale=0.0, translate=0.0)
    method.pseudo_labels = torch.tensor([1, -1, 0])
    x = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.5, -0.5]]).view(3, 2, 1, 1)
    phase = method.phases(_FlatLogits(), {"target": {"x": x, "index": torch.tensor([0, 1, 2])}}, None)[0]
    log_p = torch.log_softmax(x.flatten(1), 1)

    def smoothed(i, y):  # -(1 - eps) log p_y - eps / C sum_c log p_c
        return -(0.9 * log_p[i, y] + 0.1 / 2 * log_p[i].sum())

    assert torch.isclose(phase.losses["distill"], (smoothed(0, 1) + smoothed(2, 0)) / 2, atol=1e-6)
    assert phase.logs["labelled"] == pytest.approx(2 / 3)
    method.pseudo_labels = torch.tensor([-1, -1, -1])  # only uncertain images: a zero loss that still backpropagates
    xg = x.clone().requires_grad_(True)
    phase = method.phases(_FlatLogits(), {"target": {"x": xg, "index": torch.tensor([0, 1, 2])}}, None)[0]
    phase.losses["distill"].backward()
    assert phase.losses["distill"].item() == 0.0 and xg.grad is not None


def test_distill_bad_arguments():
    teacher = build("svhn_net", input_size=8, num_classes=2)
    for kwargs, word in (({"label_smoothing": 1.0}, "label_smoothing"), ({"degrees": -1}, "degrees"),
                         ({"fraction": 0.0}, "confident_fraction"), ({"translate": -0.1}, "translate")):
        with pytest.raises(ShiftkitError, match=word):
            ShotDistill(teacher, **kwargs)
    with pytest.raises(ShiftkitError, match="teacher"):
        ShotDistill("svhn.pth")


def test_distill_run_through_the_engine_learns_the_teachers_labels(tmp_path):
    from shiftkit.adapt.sourcefree import adapt
    from shiftkit.models.ccexam import to_unit

    torch.manual_seed(0)
    teacher = build("svhn_net", input_size=8, num_classes=2).eval()
    target = _Digits(24, 1, False, 0.2)
    with torch.no_grad():
        probs = teacher(to_unit(torch.from_numpy(target.images)[:, None], 8)).softmax(1)
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    student = fresh_copy(teacher, seed=1)
    head_before = [p.detach().clone() for p in student.head.parameters()]
    method = ShotDistill(teacher, fraction=0.5)
    m = adapt(student, target, method=method, out=tmp_path / "d", epochs=2, batch_size=8, lr=0.05, schedule="cosine",
              seed=0, device="cpu", progress=False)
    assert m["method"] == "shot_distill" and m["uses_target_labels"] is False
    assert m["select"] == "last" and m["selected_epoch"] == 1  # the method's own default: the student's last epoch
    labels = method.pseudo_labels
    kept = labels >= 0
    assert int(kept.sum()) in range(10, 15)  # about half of 24, per predicted class
    assert torch.equal(labels[kept], probs.argmax(1)[kept])  # the teacher's labels, not the student's
    assert torch.equal(labels, ShotSelfTrain.confident_labels(probs, 0.5))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True))  # the teacher never trains
    assert not all(torch.equal(a, b) for a, b in zip(head_before, student.head.parameters(), strict=True))  # the whole student does
    assert json.loads((tmp_path / "d" / "config.json").read_text())["resolved"]["method"]["fraction"] == 0.5


def test_distill_killed_mid_epoch_resumes_like_an_uninterrupted_run(tmp_path, kill_at, same_last_weights):
    """The resumed run keeps the teacher's labels from its state (the teacher is not asked again)."""
    from shiftkit.adapt.sourcefree import SHOT_DEFAULTS, SourceFreeEngine
    from shiftkit.train.engine import TrainConfig

    target = _Digits(24, 1, False, 0.2)
    torch.manual_seed(0)
    teacher = build("svhn_net", input_size=8, num_classes=2)

    def run(out, hooks=None, resume=False, labeller=teacher):
        cfg = TrainConfig(source=None, target=target, out=str(out), method="shot_distill",
                          **{**SHOT_DEFAULTS, "select": "last", "schedule": "cosine", "epochs": 2, "batch_size": 8,
                             "seed": 0, "device": "cpu", "progress": False, "ckpt_every": 1, "resume": resume})
        method = ShotDistill(labeller, fraction=0.5)
        return SourceFreeEngine(cfg, model=fresh_copy(teacher, 1), method=method, hooks=hooks).run_training(), method

    _, method_a = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", hooks={"step_end": kill_at(4)})  # 3 steps per epoch: killed inside epoch 2
    _, method_b = run(tmp_path / "b", resume=True, labeller=fresh_copy(teacher, 99))  # would label differently
    assert torch.equal(method_a.pseudo_labels, method_b.pseudo_labels)
    same_last_weights(tmp_path / "a", tmp_path / "b")
