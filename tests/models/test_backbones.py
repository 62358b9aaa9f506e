import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.models import create_backbone
from shiftkit.models.backbones import Conv2dSame, EfficientNetLite0, MobileNetV2, SmallCNN

torch.manual_seed(0)


def _check_stages(bb, x):
    outs = bb.forward_stages(x)
    assert len(outs) == len(bb.stages)
    for o, st in zip(outs, bb.stages, strict=True):
        assert o.shape == (x.shape[0], st.channels, -(-x.shape[2] // st.stride), -(-x.shape[3] // st.stride))
    return outs


@pytest.mark.parametrize(
    "name,kwargs,size",
    [("small_cnn", {"in_channels": 1}, 32), ("mobilenet_v2", {}, 40), ("efficientnet_lite0", {}, 40)],
)
def test_stage_shapes_features_and_pooled(name, kwargs, size):
    bb = create_backbone(name, **kwargs).eval()
    x = torch.rand(2, bb.in_channels, size, size)
    outs = _check_stages(bb, x)
    with torch.no_grad():
        fmap = bb.features(x)
        pooled = bb.pooled(x)
    assert fmap.shape[1] == bb.out_channels == bb.stages[-1].channels
    torch.testing.assert_close(fmap, outs[-1].detach())
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    assert torch.equal(bb(x), pooled)


def test_small_cnn_feature_dim_and_28px():
    bb = SmallCNN(in_channels=1).eval()
    assert bb.out_channels == 128 and [s.stride for s in bb.stages] == [2, 4, 8]
    assert bb.features(torch.rand(3, 1, 28, 28)).shape == (3, 128, 3, 3)
    assert SmallCNN(in_channels=3, width=64).out_channels == 256


@pytest.mark.parametrize("os_", [8, 16])
def test_mobilenet_output_stride_dilation(os_):
    bb = MobileNetV2(output_stride=os_).eval()
    x = torch.rand(1, 3, 64, 64)
    outs = bb.forward_stages(x)
    assert [s.stride for s in bb.stages] == [min(s, os_) for s in (2, 4, 8, 16, 32)]
    assert outs[-1].shape == (1, 1280, 64 // os_, 64 // os_)
    # same parameters (and key names) as the stride-32 network
    assert set(bb.state_dict()) == set(MobileNetV2().state_dict())


def test_mobilenet_features_is_callable_and_indexable():
    bb = MobileNetV2().eval()
    assert isinstance(bb.features[0][0], torch.nn.Conv2d) and len(bb.features) == 19
    assert bb.features(torch.rand(1, 3, 32, 32)).shape == (1, 1280, 1, 1)
    assert "features.0.0.weight" in bb.state_dict()


def test_gray_input_is_replicated_on_rgb_backbone():
    bb = MobileNetV2().eval()
    g = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb(g), bb(g.repeat(1, 3, 1, 1)))


def test_rgb_input_is_averaged_on_gray_backbone():
    bb = SmallCNN(in_channels=1).eval()
    rgb = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(bb(rgb), bb(rgb.mean(1, keepdim=True)))


def test_prepare_normalises_by_hand():
    bb = MobileNetV2()
    x = torch.full((1, 3, 2, 2), 0.5)
    want = torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(bb.prepare(x), want)
    lite = EfficientNetLite0()
    # official Lite preprocessing: (255 x - 127) / 128
    torch.testing.assert_close(lite.prepare(x), torch.full((1, 3, 2, 2), (127.5 - 127) / 128))
    raw = MobileNetV2(input_normalize=False)
    assert torch.equal(raw.prepare(x), x)


def test_conv2d_same_matches_tf_padding_by_hand():
    # 4x4 ones, 3x3 ones kernel, stride 2: TF SAME pads 0 before and 1 after -> [[9, 6], [6, 4]]
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.tensor([[[[9.0, 6.0], [6.0, 4.0]]]]))
    # odd size: 5x5 -> pad 1/1, ceil(5/2) = 3 outputs
    assert conv(torch.ones(1, 1, 5, 5)).shape == (1, 1, 3, 3)


def test_conv2d_same_gradcheck():
    conv = Conv2dSame(2, 2, 3, stride=2, bias=True).double()
    x = torch.rand(1, 2, 5, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


def test_gradient_reaches_input_and_weights():
    bb = SmallCNN(in_channels=1)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    bb(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bb.parameters())


def test_freeze_stops_gradients_and_keeps_bn_statistics():
    bb = MobileNetV2()
    bb.freeze(2)
    mods = bb._stage_modules()
    assert bb.frozen_stages == 2
    assert all(not p.requires_grad for m in mods[0] + mods[1] for p in m.parameters())
    assert all(p.requires_grad for m in mods[2] for p in m.parameters())
    bb.train()
    frozen_bn = bb.features[0][1]
    live_bn = bb.features[18][1]
    assert not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone()
    bb(torch.rand(2, 3, 32, 32))
    assert torch.equal(frozen_bn.running_mean, before)
    bb.freeze(0)
    assert all(p.requires_grad for p in bb.parameters())


def test_freeze_all_efficientnet_includes_stem_and_head():
    bb = EfficientNetLite0()
    bb.freeze()
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb._bn0.training and not bb._bn1.training
    bb.freeze(1)
    assert not bb._conv_stem.weight.requires_grad and bb._conv_head.weight.requires_grad


def test_set_bn_eval_freezes_all_batchnorm():
    bb = SmallCNN().set_bn_eval(True)
    bb.train()
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in bb.parameters())  # only statistics are frozen


@pytest.mark.parametrize(
    "call",
    [
        lambda: SmallCNN(in_channels=2),
        lambda: SmallCNN(width=0),
        lambda: MobileNetV2(output_stride=4),
        lambda: create_backbone("resnet9000"),
        lambda: create_backbone("small_cnn", weights="imagenet"),
        lambda: create_backbone("small_cnn", bogus=1),
        lambda: SmallCNN().freeze(7),
    ],
)
def test_bad_arguments_raise_shiftkit_error(call):
    with pytest.raises(ShiftkitError):
        call()


@pytest.mark.parametrize(
    "x",
    [torch.rand(3, 28, 28), torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.rand(1, 2, 28, 28)],
)
def test_bad_inputs_raise_shiftkit_error(x):
    with pytest.raises(ShiftkitError):
        SmallCNN()(x)


def test_logits_need_include_top():
    with pytest.raises(ShiftkitError, match="include_top"):
        MobileNetV2().logits(torch.rand(1, 3, 32, 32))
    assert MobileNetV2(include_top=True, num_classes=7).eval().logits(torch.rand(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_forward_matches_cpu():
    bb = MobileNetV2().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        cpu = bb(x)
        gpu = bb.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
