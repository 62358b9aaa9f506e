import random

import numpy as np
import pytest
import torch

from shiftkit.errors import ShiftkitError
from shiftkit.train import checkpoint as ckpt


def test_rng_state_roundtrip_through_file(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    ckpt.save_state(tmp_path / "s.pt", {"rng": ckpt.rng_state(), "n": 3})
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "s.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_weights_roundtrip_and_errors(tmp_path):
    from shiftkit.models import build_model

    spec = {"arch": "classifier", "backbone": {"name": "small_cnn", "in_channels": 1, "width": 4}, "num_classes": 3}
    m = build_model(spec)
    disc = torch.nn.Linear(4, 1)
    info = {"spec": m.spec, "classes": ["a", "b", "c"], "input_size": [16, 16], "in_channels": 1}
    ckpt.save_weights(tmp_path / "w.safetensors", m, info, {"discriminator": disc}, {"sel": torch.arange(3)}, {"epoch": 2})
    groups, info2, meta = ckpt.read_weights(tmp_path / "w.safetensors")
    assert info2["classes"] == ["a", "b", "c"] and meta["epoch"] == 2
    assert torch.equal(groups["method"]["sel"], torch.arange(3)) and "weight" in groups["discriminator"]
    m2, _, _ = ckpt.load_model(tmp_path / "w.safetensors")
    x = torch.rand(2, 1, 16, 16)
    m.eval()
    assert torch.allclose(m(x), m2(x))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ShiftkitError):
        ckpt.read_weights(tmp_path / "junk.safetensors")
    with pytest.raises(ShiftkitError):
        ckpt.read_weights(tmp_path / "missing.safetensors")
