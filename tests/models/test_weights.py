import os

import pytest
import torch

from shiftkit.models import create_backbone, load_pretrained
from shiftkit.models.backbones import EfficientNetLite0, MobileNetV2, SmallCNN
from shiftkit.models.weights import WEIGHTS, WeightsError, get_weights, read_state_dict

from .conftest import CAT_CLASSES


@pytest.fixture(scope="module")
def mobilenet_top():
    m = MobileNetV2(include_top=True)
    info = load_pretrained(m, "mobilenet_v2-imagenet")
    return m.eval(), info


@pytest.fixture(scope="module")
def lite_top():
    m = EfficientNetLite0(include_top=True)
    info = load_pretrained(m, "efficientnet_lite0-imagenet")
    return m.eval(), info


def test_registry_entries_describe_the_files():
    for name in ("mobilenet_v2-imagenet", "efficientnet_lite0-imagenet"):
        e = get_weights(name)
        assert e.input_size == 224 and e.num_classes == 1000 and len(e.sha256) == 64
        assert len(e.mean) == len(e.std) == 3


def test_mobilenet_strict_load_and_cat(mobilenet_top, chelsea_224):
    m, info = mobilenet_top
    assert info["num_keys"] == WEIGHTS["mobilenet_v2-imagenet"].num_keys == len(m.state_dict()) == 314
    with torch.no_grad():
        top = int(m.logits(chelsea_224).argmax(1))
    assert top in CAT_CLASSES, top


def test_efficientnet_lite0_strict_load_and_cat(lite_top, chelsea_224):
    m, info = lite_top
    assert info["num_keys"] == len(m.state_dict()) == 296
    with torch.no_grad():
        top = int(m.logits(chelsea_224).argmax(1))
    assert top in CAT_CLASSES, top


def test_backbone_without_top_drops_only_the_classifier(mobilenet_top):
    bb = create_backbone("mobilenet_v2", weights="imagenet")
    assert bb.spec["weights"] == "mobilenet_v2-imagenet"
    full = mobilenet_top[0].state_dict()
    own = bb.state_dict()
    assert len(own) == len(full) - 2
    assert all(torch.equal(own[k], full[k]) for k in own)


def test_wrong_architecture_for_registry_name():
    with pytest.raises(WeightsError, match="for mobilenet_v2"):
        load_pretrained(SmallCNN(), "mobilenet_v2-imagenet")


def test_unknown_name_lists_known_weights():
    with pytest.raises(WeightsError, match="mobilenet_v2-imagenet"):
        load_pretrained(SmallCNN(), "no-such-weights")


def test_key_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    model = SmallCNN()
    sd = model.state_dict()
    keys = list(sd)
    dropped = keys[:12]
    bad = {k: v for k, v in sd.items() if k not in dropped}
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(WeightsError) as err:
        load_pretrained(SmallCNN(), path)
    msg = str(err.value)
    assert "12 missing" in msg and "(+2 more)" in msg
    assert all(k in msg for k in dropped[:10]) and dropped[11] not in msg
    assert "1 unexpected: extra.weight" in msg and str(path) in msg


def test_shape_mismatch_is_reported(tmp_path):
    sd = SmallCNN(width=16).state_dict()
    path = tmp_path / "w16.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_pretrained(SmallCNN(width=32), path)


def test_local_pth_safetensors_and_wrapped_files_load(tmp_path):
    from safetensors.torch import save_file

    src = SmallCNN()
    torch.nn.init.normal_(src.stage1[0].weight)
    sd = src.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("wrapped.pt", "w.safetensors"):
        dst = SmallCNN()
        info = load_pretrained(dst, tmp_path / name)
        assert info["num_keys"] == len(sd)
        assert torch.equal(dst.stage1[0].weight, src.stage1[0].weight)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"stage1.0.weight": torch.zeros(1), "payload": _Evil(marker)}, path)
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(path)
    with pytest.raises(WeightsError):
        load_pretrained(SmallCNN(), path)
    assert not marker.exists()


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        read_state_dict(junk)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
