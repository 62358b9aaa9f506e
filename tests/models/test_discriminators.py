import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.models import DomainDiscriminator, PixelDiscriminator


def test_domain_discriminator_shapes_and_gradient():
    d = DomainDiscriminator(32, hidden=16)
    x = torch.randn(5, 32, requires_grad=True)
    out = d(x)
    assert out.shape == (5, 1)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_domain_discriminator_by_hand():
    d = DomainDiscriminator(2, hidden=2, batch_norm=False, dropout=0.0)
    lin = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
        lin[0].bias.copy_(torch.tensor([0.0, -1.0]))
        lin[1].weight.copy_(torch.eye(2))
        lin[1].bias.zero_()
        lin[2].weight.copy_(torch.tensor([[1.0, 3.0]]))
        lin[2].bias.copy_(torch.tensor([0.5]))
    # x = (1, 2): h1 = relu([1-2, 2-1]) = [0, 1]; h2 = [0, 1]; out = 0 + 3 + 0.5
    assert d(torch.tensor([[1.0, 2.0]])).item() == pytest.approx(3.5)


def test_pixel_discriminator_shapes():
    d = PixelDiscriminator(11, ndf=8)
    assert d(torch.rand(2, 11, 64, 96)).shape == (2, 1, 2, 3)
    assert PixelDiscriminator(3, ndf=4, num_layers=2)(torch.rand(1, 3, 8, 8)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: DomainDiscriminator(0),
        lambda: DomainDiscriminator(4, hidden=-1),
        lambda: DomainDiscriminator(4, dropout=1.0),
        lambda: DomainDiscriminator(4)(torch.rand(2, 5)),
        lambda: PixelDiscriminator(3)(torch.rand(1, 4, 64, 64)),
        lambda: PixelDiscriminator(3)(torch.rand(1, 3, 16, 16)),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(ShiftkitError):
        call()
