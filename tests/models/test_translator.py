import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.models.translator import PatchDiscriminator, PatchSampleMLP, ResnetGenerator, build_translator, translate
from shiftkit.transfer.learned import edge_alignment


def test_generator_keeps_size_and_range():
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=2)
    for shape in [(2, 3, 32, 32), (1, 3, 24, 40)]:
        y = g(torch.rand(shape))
        assert y.shape == shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    g1 = ResnetGenerator(1, 3, ngf=4, n_blocks=1)
    assert g1(torch.rand(1, 1, 16, 16)).shape == (1, 3, 16, 16)


def test_generator_is_shift_equivariant_in_the_interior():
    """Geometry: shifting the input by 4 px (the downsampling factor) shifts the output by 4 px
    up to the small change of instance-norm statistics that the borders' padding causes; compared
    with the error of ignoring the shift, which is what a generator that moved content would show)."""
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, ngf=4, n_blocks=1).eval()
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        y, ys = g(x), g(torch.roll(x, shifts=(4, 8), dims=(2, 3)))
    m = 48
    aligned = (torch.roll(y, shifts=(4, 8), dims=(2, 3)) - ys)[..., m:-m, m:-m].abs().mean()
    misaligned = (y - ys)[..., m:-m, m:-m].abs().mean()
    assert float(aligned) < 0.1 * float(misaligned)


def test_translate_any_size_and_scale():
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, ngf=4, n_blocks=1).eval()
    x = torch.rand(2, 1, 30, 45)  # not a multiple of 4: reflect-padded and cropped back
    with torch.no_grad():
        assert translate(g, x).shape == x.shape
        assert translate(g, x, size=16).shape == x.shape
        assert translate(g, torch.rand(1, 3, 20, 20)).shape == (1, 1, 20, 20)  # channels matched to G
        # native size: the padded result is the plain result on the multiple-of-4 part
        x8 = torch.rand(1, 1, 32, 32)
        assert torch.allclose(translate(g, x8), g(x8))


def test_identity_like_generator_keeps_edges():
    """A generator trained briefly towards the identity keeps the edges of its input, not of another image."""
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, ngf=8, n_blocks=1)
    opt = torch.optim.Adam(g.parameters(), lr=5e-3)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for _ in range(60):
        c = torch.randint(8, 24, (2,)).float()
        x = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 36).float()[None, None] * 0.8 + 0.1
        loss = (g(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = ((yy - 15) ** 2 + (xx - 12) ** 2 < 49).float()[None, None] * 0.8 + 0.1
    elsewhere = ((yy - 22) ** 2 + (xx - 22) ** 2 < 49).float()[None, None] * 0.8 + 0.1
    with torch.no_grad():
        r, unrelated = edge_alignment(x, g(x)), edge_alignment(x, g(elsewhere))
    assert float(r) > 0.5 and float(r) > float(unrelated) + 0.4
    assert float(edge_alignment(x, x)) == pytest.approx(1.0, abs=1e-6)


def test_edge_alignment_hand_cases():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :, 4:] = 1.0
    assert float(edge_alignment(x, 0.5 * x + 0.2)) == pytest.approx(1.0, abs=1e-6)  # contrast-invariant
    flipped = x.transpose(-1, -2)  # vertical edge -> horizontal edge
    assert float(edge_alignment(x, flipped)) < 0.2
    with pytest.raises(ShiftkitError):
        edge_alignment(x, torch.zeros(1, 1, 4, 4))


def test_discriminator_patch_shape():
    d = PatchDiscriminator(3, ndf=4, n_layers=3)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ShiftkitError):
        d(torch.rand(1, 3, 8, 8))
    with pytest.raises(ShiftkitError):
        d(torch.rand(1, 1, 64, 64))


def test_patch_sample_mlp_shapes_norms_and_shared_ids():
    f = PatchSampleMLP([3, 5], nc=8)
    feats = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    ids = PatchSampleMLP.sample_ids(feats, 6, torch.Generator().manual_seed(0))
    assert [len(i) for i in ids] == [6, 4]  # all 4 locations when fewer than asked
    out = f(feats, ids)
    assert [o.shape for o in out] == [(2, 6, 8), (2, 4, 8)]
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(2, 6), atol=1e-5)
    # the projected patch k is the MLP of the feature vector at location ids[k]
    loc = int(ids[0][0])
    v = feats[0][0, :, loc // 4, loc % 4]
    assert torch.allclose(out[0][0, 0], torch.nn.functional.normalize(f.mlps[0](v), dim=0), atol=1e-5)


def test_gradient_reaches_the_input():
    g = ResnetGenerator(1, 1, ngf=4, n_blocks=1)
    x = torch.rand(1, 1, 16, 16, requires_grad=True)
    g(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    feats = g.encode(x.detach().requires_grad_(True), [0, 4, 8])
    assert [f.shape[1] for f in feats] == [1, 8, 16]


@pytest.mark.parametrize("bad", [
    lambda: ResnetGenerator(3, 3, ngf=0),
    lambda: ResnetGenerator(2, 3),
    lambda: ResnetGenerator(3, 3, n_blocks=-1),
    lambda: ResnetGenerator(1, 1, ngf=4, n_blocks=1)(torch.rand(1, 1, 10, 10)),
    lambda: ResnetGenerator(1, 1, ngf=4, n_blocks=1)(torch.rand(1, 3, 16, 16)),
    lambda: ResnetGenerator(1, 1, ngf=4, n_blocks=1).check_layers([0, 99]),
    lambda: ResnetGenerator(1, 1, ngf=4, n_blocks=1).check_layers([4, 0]),
    lambda: PatchSampleMLP([3], nc=0),
    lambda: build_translator({"arch": "resnet50"}),
])
def test_bad_arguments(bad):
    with pytest.raises(ShiftkitError):
        bad()


def test_build_translator_round_trip():
    g = ResnetGenerator(1, 3, ngf=4, n_blocks=2)
    h = build_translator(g.spec)
    h.load_state_dict(g.state_dict())
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(g(x), h(x))


def test_build_model_knows_the_translator():
    from shiftkit.models import build_model

    g = ResnetGenerator(1, 1, ngf=4, n_blocks=1)
    h = build_model(g.spec)
    assert isinstance(h, ResnetGenerator) and h.spec == g.spec
