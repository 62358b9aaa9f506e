import pytest
import torch
from torch import nn

from shiftkit.device import CPU_CHUNK_PIXELS, cpu_chunk_pixels, forward_chunked, resolve_device
from shiftkit.errors import ShiftkitError


class Recorder(nn.Module):
    """A small eval-mode net returning (features, logits), recording each call's batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.calls: list[int] = []
        self.eval()

    def forward(self, x):
        self.calls.append(len(x))
        f = self.body(x).mean((2, 3))
        return f, self.head(f)


def test_chunks_follow_the_pixel_budget_and_match_one_batch(monkeypatch):
    net, x = Recorder(), torch.rand(10, 3, 8, 8)
    with torch.no_grad():
        whole = net(x)
        monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", str(3 * 64))  # 3 images of 8x8 per call
        net.calls.clear()
        got = forward_chunked(net, x)
    assert net.calls == [3, 3, 3, 1]
    assert isinstance(got, tuple) and len(got) == 2
    for a, b in zip(got, whole, strict=True):
        torch.testing.assert_close(a, b)


def test_tensor_and_list_outputs(monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", "16")  # one 4x4 image per call
    x = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 1, 4, 4)
    torch.testing.assert_close(forward_chunked(lambda v: v * 2, x), x * 2)
    out = forward_chunked(lambda v: [v, v.sum((1, 2, 3))], x)
    assert isinstance(out, list)
    torch.testing.assert_close(out[1], x.sum((1, 2, 3)))


def test_small_batches_and_budget_below_one_image_go_through(monkeypatch):
    net, x = Recorder(), torch.rand(4, 3, 8, 8)
    forward_chunked(net, x)  # default budget: 4 images of 8x8 fit in one call
    assert net.calls == [4]
    monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", "1")  # less than an image: one image per call
    net.calls.clear()
    forward_chunked(net, x)
    assert net.calls == [1, 1, 1, 1]


def test_budget_setting(monkeypatch):
    monkeypatch.delenv("SHIFTKIT_CPU_CHUNK_PIXELS", raising=False)
    assert cpu_chunk_pixels() == CPU_CHUNK_PIXELS
    for bad in ("0", "-5", "many"):
        monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", bad)
        with pytest.raises(ShiftkitError, match="SHIFTKIT_CPU_CHUNK_PIXELS must be a positive integer"):
            cpu_chunk_pixels()


def test_unsupported_output_is_refused(monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", "16")
    with pytest.raises(TypeError, match="expected a tensor, tuple or list"):
        forward_chunked(lambda v: {"z": v}, torch.rand(2, 1, 4, 4))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ShiftkitError, match="unknown device"):
        resolve_device("tpu9")
