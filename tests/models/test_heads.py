import json

import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.models import Classifier, build_model, create_backbone
from shiftkit.models.backbones import SmallCNN


def _clf(**kw):
    torch.manual_seed(0)
    return Classifier(SmallCNN(in_channels=1), 10, **kw)


def test_forward_and_forward_features_shapes():
    m = _clf(bottleneck=64, dropout=0.1).eval()
    x = torch.rand(4, 1, 28, 28)
    f, logits = m.forward_features(x)
    assert f.shape == (4, 64) and logits.shape == (4, 10) and m.feature_dim == 64
    torch.testing.assert_close(m(x), logits)
    m2 = _clf().eval()
    f2, l2 = m2.forward_features(x)
    assert f2.shape == (4, 128)
    # without bottleneck the features are the pooled backbone features
    torch.testing.assert_close(f2, m2.backbone.pooled(x))
    torch.testing.assert_close(l2, m2.head(f2))


def test_param_groups_split_body_and_head():
    m = _clf(bottleneck=32)
    groups = m.param_groups(0.01, head_lr_mult=10)
    by = {g["name"]: g for g in groups}
    assert by["backbone"]["lr"] == 0.01 and by["head"]["lr"] == pytest.approx(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    head_ids = {id(p) for p in list(m.bottleneck.parameters()) + list(m.head.parameters())}
    assert {id(p) for p in by["head"]["params"]} == head_ids
    m.backbone.freeze()
    groups = m.param_groups(0.01)
    assert [g["name"] for g in groups] == ["head"]
    assert m.param_groups(0.01, weight_decay=5e-4)[0]["weight_decay"] == 5e-4


def test_gradients_reach_head_and_body():
    m = _clf(bottleneck=16)
    torch.nn.functional.cross_entropy(m(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    assert m.head.weight.grad.abs().sum() > 0 and m.backbone.stage1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw", [{"num_classes": 1}, {"num_classes": 3, "bottleneck": 0}, {"num_classes": 3, "dropout": 1.0}])
def test_bad_arguments(kw):
    with pytest.raises(ShiftkitError):
        Classifier(SmallCNN(), **kw)
    with pytest.raises(ShiftkitError):
        Classifier(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ShiftkitError):
        _clf().param_groups(0.0)


def test_spec_roundtrip_rebuilds_identical_model():
    m = _clf(bottleneck=48, dropout=0.2).eval()
    spec = json.loads(json.dumps(m.spec))  # what a checkpoint's .json stores
    m2 = build_model(spec)
    m2.load_state_dict(m.state_dict(), strict=True)
    m2.eval()
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(m2(x), m(x))
    assert m2.spec == m.spec


def test_build_model_bare_backbone_and_errors():
    bb = build_model({"arch": "small_cnn", "in_channels": 3, "width": 8})
    assert bb.out_channels == 32 and bb.in_channels == 3
    assert build_model("mobilenet_v2").out_channels == 1280
    for bad in ({"arch": "nope"}, {"arch": "classifier", "num_classes": 2}, {"foo": 1}, {"arch": "classifier", "backbone": {"name": "small_cnn"}}):
        with pytest.raises(ShiftkitError):
            build_model(bad)


def test_build_model_with_pretrained_backbone_records_weights():
    m = build_model({"arch": "classifier", "backbone": {"name": "mobilenet_v2"}, "num_classes": 2}, weights="imagenet")
    assert m.spec["backbone"]["weights"] == "mobilenet_v2-imagenet"
    ref = create_backbone("mobilenet_v2", weights="mobilenet_v2-imagenet")
    assert torch.equal(m.backbone.features[0][0].weight, ref.features[0][0].weight)
    # rebuilding from the spec does not fetch or load weights (the checkpoint's tensors follow)
    m2 = build_model(m.spec)
    assert not torch.equal(m2.backbone.features[0][0].weight, ref.features[0][0].weight)


def test_frozen_backbone_bn_stays_eval_inside_classifier():
    m = _clf()
    m.backbone.freeze()
    m.train()
    bns = [b for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert not any(b.training for b in bns) and m.head.training
