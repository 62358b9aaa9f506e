import json

import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.models import build_model
from shiftkit.models.backbones import MobileNetV2, SmallCNN
from shiftkit.models.segmentation import ASPP, DeepLabV2, UNet


def test_aspp_by_hand():
    aspp = ASPP(1, 1, rates=(1, 2))
    with torch.no_grad():
        for conv in aspp.branches:
            conv.weight.zero_()
        aspp.branches[0].weight[0, 0, 1, 1] = 3.0  # rate 1: 3 * x
        aspp.branches[0].bias.fill_(1.0)
        aspp.branches[1].weight[0, 0, 0, 0] = 1.0  # rate 2, top-left tap: x[i - 2, j - 2]
        aspp.branches[1].bias.zero_()
    x = torch.arange(9.0).view(1, 1, 3, 3)
    want = 3 * x + 1
    want[0, 0, 2, 2] += x[0, 0, 0, 0]  # only (2, 2) has a valid (i - 2, j - 2)
    torch.testing.assert_close(aspp(x), want)


def test_deeplab_two_levels_shapes_and_gradient():
    torch.manual_seed(0)
    m = DeepLabV2(MobileNetV2(output_stride=8), 11, rates=(1, 2), aux_stage=3)
    x = torch.rand(2, 3, 48, 40)
    main, aux = m.forward_multi(x)
    assert main.shape == aux.shape == (2, 11, 48, 40)
    coarse = m.forward_multi(x, upsample=False)
    assert [c.shape[-2:] for c in coarse] == [(6, 5), (6, 5)]
    feat, logits = m.forward_features(x)
    assert feat.shape == (2, 1280, 6, 5) and logits.shape == (2, 11, 48, 40)
    (main.mean() + aux.mean()).backward()
    assert m.aux_classifier.branches[0].weight.grad is not None
    assert m.backbone.features[0][0].weight.grad is not None
    single = DeepLabV2(MobileNetV2(), 3, aux_stage=None).eval()
    assert len(single.forward_multi(torch.rand(1, 3, 32, 32))) == 1


def test_unet_shapes_odd_sizes_and_gray_input():
    m = UNet(5, in_channels=3, base=4, depth=3)
    outs = m.forward_multi(torch.rand(2, 1, 30, 22))
    assert [o.shape for o in outs] == [(2, 5, 30, 22)] * 2
    assert len(UNet(5, base=4, depth=2, aux=False).forward_multi(torch.rand(1, 3, 16, 16))) == 1


def test_param_groups_cover_everything_once():
    m = UNet(4, base=4, depth=2)
    groups = m.param_groups(1e-3, head_lr_mult=5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert {g["name"]: g["lr"] for g in groups} == {"backbone": 1e-3, "head": pytest.approx(5e-3)}


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "unet", "num_classes": 11, "in_channels": 1, "base": 4, "depth": 2},
        {"arch": "deeplabv2", "backbone": {"name": "small_cnn", "in_channels": 1, "width": 4}, "num_classes": 3, "rates": [1], "aux_stage": 1},
    ],
)
def test_spec_roundtrip(spec):
    m = build_model(spec).eval()
    m2 = build_model(json.loads(json.dumps(m.spec))).eval()
    m2.load_state_dict(m.state_dict(), strict=True)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize(
    "call",
    [
        lambda: DeepLabV2(SmallCNN(), 1),
        lambda: DeepLabV2(SmallCNN(), 3, aux_stage=2),
        lambda: DeepLabV2(torch.nn.Conv2d(3, 3, 1), 3),
        lambda: ASPP(8, 3, rates=(0,)),
        lambda: UNet(3, depth=0),
        lambda: UNet(3, in_channels=4),
        lambda: build_model({"arch": "unet", "num_classes": 3}, weights="imagenet"),
        lambda: build_model({"arch": "unet", "num_classes": 3, "bogus": 1}),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ShiftkitError):
        call()
