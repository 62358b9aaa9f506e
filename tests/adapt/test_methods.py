import pytest
import torch
from torch import nn

from shiftkit.adapt import StepInfo, build_method
from shiftkit.adapt.registry import split_parts
from shiftkit.errors import ShiftkitError


class TinyNet(nn.Module):
    def __init__(self, d=6, c=3):
        super().__init__()
        self.body = nn.Linear(5, d)
        self.head = nn.Linear(d, c)

    def forward(self, x):
        f = torch.relu(self.body(x))
        return f, self.head(f)


class FakeEngine:
    feature_dim, num_classes = 6, 3

    def stream_size(self, name):
        return 10


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"source": {"x": torch.randn(n, 5, generator=g), "y": torch.tensor([0, 1, 2, 0][:n]), "index": torch.arange(n)},
            "target": {"x": torch.randn(n, 5, generator=g), "y": torch.full((n,), -1), "index": torch.arange(n)}}


@pytest.mark.parametrize("name", ["source-only", "dann", "cdan", "cdan+e", "mcc", "self-training", "dann+mcc",
                                  "cdan+e+mcc+self-training", "im"])
def test_every_method_one_step(name):
    torch.manual_seed(0)
    m = build_method(name, label_smoothing=0.1)
    m.setup(FakeEngine())
    net = TinyNet()
    phases = m.phases(net, _batch(), StepInfo(5, 0, 10))
    assert len(phases) == 1
    losses = phases[0].resolve()
    assert "cls" in losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert net.body.weight.grad is not None
    for mod in m.modules().values():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
        assert "discriminator" in phases[0].groups
    if name == "source-only":
        assert m.streams == ("source",) and len(losses) == 1


def test_dann_reverses_gradient_into_features():
    torch.manual_seed(0)
    m = build_method("dann", disc_hidden=8)
    m.setup(FakeEngine())
    net = TinyNet()
    b = _batch()
    # at progress 0 lambda is 0: the domain loss sends no gradient to the features
    losses = m.phases(net, b, StepInfo(0, 0, 10))[0].resolve()
    losses["dann"].backward()
    assert net.body.weight.grad is None or net.body.weight.grad.abs().sum() == 0
    disc_grad = [p.grad.clone() for p in m.modules()["discriminator"].parameters()]
    assert any(g.abs().sum() > 0 for g in disc_grad)


def test_self_training_records_confident_predictions():
    m = build_method("self-training", st_tau=0.5, st_floor=0.0)
    m.setup(FakeEngine())
    net = TinyNet()
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    m.phases(net, _batch(), StepInfo(0, 0, 10))[0].resolve()
    sel = m.state_dict()["0.self-training.selected"]
    assert sel[:4].tolist() == [0, 0, 0, 0] and (sel[4:] == -1).all()
    m2 = build_method("self-training")
    m2.setup(FakeEngine())
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.state_dict()["0.self-training.selected"], sel)


def test_registry_names_and_errors():
    assert split_parts("cdan+e+mcc") == ["cdan+e", "mcc"]
    assert build_method("dann+mcc").name == "dann+mcc"
    for bad in ("nope", "dann+cdan", "mcc+mcc", ""):
        with pytest.raises(ShiftkitError):
            build_method(bad)
