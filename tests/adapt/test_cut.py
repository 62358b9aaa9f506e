import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shiftkit.adapt.cut import (
    CUT,
    CUTSettings,
    discriminator_loss,
    generator_gan_loss,
    lsgan_loss,
    multilayer_nce,
    patch_nce_loss,
)
from shiftkit.errors import ShiftkitError


def _hand_nce(q, k, tau):
    """Loop over images and patches: -log(exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau))."""
    total, count = 0.0, 0
    for b in range(len(q)):
        for i in range(len(q[b])):
            dots = [sum(x * y for x, y in zip(q[b][i], k[b][j], strict=True)) / tau for j in range(len(q[b]))]
            total += -(dots[i] - math.log(sum(math.exp(v) for v in dots)))
            count += 1
    return total / count


def test_patch_nce_against_hand_computation():
    q = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    k = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]])
    for tau in (0.07, 0.5, 1.0):
        assert float(patch_nce_loss(q, k, tau)) == pytest.approx(_hand_nce(q.tolist(), k.tolist(), tau), rel=1e-5)


def test_patch_nce_random_batch_against_hand_and_cut_reference():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    k = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    got = float(patch_nce_loss(q, k, 0.07))
    assert got == pytest.approx(_hand_nce(q.tolist(), k.tolist(), 0.07), rel=1e-4)
    # CUT's own formulation: positives, negatives within the image with the diagonal masked by -10
    l_pos = (q * k).sum(-1, keepdim=True).reshape(-1, 1)
    l_neg = torch.bmm(q, k.transpose(1, 2))
    l_neg.masked_fill_(torch.eye(5, dtype=torch.bool)[None], -10.0)
    out = torch.cat([l_pos, l_neg.reshape(-1, 5)], 1) / 0.07
    ref = F.cross_entropy(out, torch.zeros(10, dtype=torch.long))
    assert got == pytest.approx(float(ref), rel=1e-5)


def test_patch_nce_perfect_match_is_small_and_keys_are_detached():
    q = torch.eye(4)[None].clone().requires_grad_(True)
    k = torch.eye(4)[None].clone().requires_grad_(True)
    loss = patch_nce_loss(q, k, 0.07)
    assert float(loss.detach()) < 1e-5  # 3 * exp(-1 / 0.07) next to 1
    patch_nce_loss(q, k.flip(1), 0.07).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # no gradient through the keys, as in CUT
    assert patch_nce_loss(q, k, 0.07, reduction="none").shape == (1, 4)


def test_multilayer_nce_is_the_mean_over_layers():
    g = torch.Generator().manual_seed(1)
    qs = [F.normalize(torch.randn(1, 3, 2, generator=g), dim=-1) for _ in range(2)]
    ks = [F.normalize(torch.randn(1, 3, 2, generator=g), dim=-1) for _ in range(2)]
    want = (patch_nce_loss(qs[0], ks[0]) + patch_nce_loss(qs[1], ks[1])) / 2
    assert torch.allclose(multilayer_nce(qs, ks), want)


def test_gan_loss_values():
    pred = torch.tensor([[0.5, 2.0]])
    assert float(lsgan_loss(pred, True)) == pytest.approx((0.25 + 1.0) / 2)
    assert float(lsgan_loss(pred, False)) == pytest.approx((0.25 + 4.0) / 2)
    assert float(generator_gan_loss(pred)) == pytest.approx(0.625)
    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert float(discriminator_loss(real, fake)) == pytest.approx(0.5 * (0.5 + 0.5))
    assert float(discriminator_loss(torch.ones(3), torch.zeros(3))) == 0.0


@pytest.mark.parametrize("bad", [
    lambda: patch_nce_loss(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2)),
    lambda: patch_nce_loss(torch.zeros(3, 2), torch.zeros(3, 2)),
    lambda: patch_nce_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), tau=0.0),
    lambda: multilayer_nce([], []),
    lambda: CUTSettings(preset="cyclegan"),
    lambda: CUTSettings(num_patches=0),
    lambda: CUTSettings(lambda_nce=-1.0),
    lambda: CUT(3, CUTSettings(n_blocks=1, nce_layers=[0, 40])),
])
def test_bad_arguments(bad):
    with pytest.raises(ShiftkitError):
        bad()


def test_presets():
    cut, fast = CUTSettings(), CUTSettings(preset="fastcut")
    assert (cut.lambda_nce, cut.nce_idt, cut.flip_equivariance) == (1.0, True, False)
    assert (fast.lambda_nce, fast.nce_idt, fast.flip_equivariance) == (10.0, False, True)
    assert (cut.num_patches, cut.tau, cut.nc, cut.lr, cut.beta1, cut.beta2) == (256, 0.07, 256, 2e-4, 0.5, 0.999)
    assert CUTSettings(preset="fastcut", lambda_nce=3.0).lambda_nce == 3.0


def _tiny(preset="cut"):
    torch.manual_seed(0)
    return CUT(1, CUTSettings(preset=preset, ngf=4, n_blocks=2, ndf=4, num_patches=8, nc=8))


@pytest.mark.parametrize("preset", ["cut", "fastcut"])
def test_phases_losses_and_gradients(preset):
    m = _tiny(preset)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    (d_phase, g_phase), t = m.phases(a, b, generator=torch.Generator().manual_seed(0))
    assert t["fake_b"].shape == a.shape
    d = d_phase.resolve()
    assert set(d) == {"D"} and d_phase.groups == ("D",)
    d["D"].backward()
    assert all(p.grad is not None for p in m.D.parameters())
    assert all(p.grad is None for p in m.G.parameters())  # D's loss sees G(A) detached
    gl = g_phase.resolve()
    assert set(gl) == ({"G_GAN", "NCE", "NCE_Y"} if preset == "cut" else {"G_GAN", "NCE"})
    sum(gl.values()).backward()
    assert all(torch.isfinite(v) for v in gl.values())
    assert sum(float(p.grad.abs().sum()) for p in m.G.parameters() if p.grad is not None) > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.F.parameters())


def test_cut_uses_clipped_default_layers():
    m = _tiny()
    assert m.nce_layers == [0, 4, 8, 12, 13]  # encoder of 2 blocks ends at layer 13
    assert len(m.F.mlps) == 5
    assert m.F.channels == [1, 8, 16, 16, 16]  # input, conv ngf->2ngf, conv 2ngf->4ngf, blocks


# --------------------------------------------------------------------------- the training loop
def _sets(root, channels=1):
    from shiftkit.data import DatasetWriter, Sample

    rng = np.random.default_rng(0)
    with DatasetWriter(root / "A", format="imagefolder", classes=["x", "y"]) as w:
        for i in range(4):
            w.write(Sample(rng.integers(0, 255, (40, 36, channels), dtype=np.uint8), i % 2, f"a{i}.png"))
    with DatasetWriter(root / "B", format="folder") as w:
        for i in range(3):
            w.write(Sample(rng.integers(0, 100, (36, 36, 1), dtype=np.uint8), None, f"b{i}.png"))
    return root / "A", root / "B"


def _cfg(a, b, out, **kw):
    from shiftkit.train.translator_loop import TranslatorConfig

    base = dict(size=32, steps=4, batch_size=2, ngf=4, n_blocks=2, ndf=4, num_patches=8, ckpt_every=1, grid_every=0,
                progress=False, threads=1, seed=3)
    base.update(kw)
    return TranslatorConfig(str(a), str(b), str(out), **base)


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / "last.safetensors"))


def test_resume_after_kill_gives_identical_weights(tmp_path):
    from shiftkit.train.translator_loop import train_translator

    a, b = _sets(tmp_path)
    full = train_translator(_cfg(a, b, tmp_path / "full"))
    assert full["steps"] == 4 and (tmp_path / "full" / "metrics.json").is_file()

    class Kill(Exception):
        pass

    def kill(step):
        if step == 2:
            raise Kill

    with pytest.raises(Kill):
        train_translator(_cfg(a, b, tmp_path / "cut"), after_step=kill)
    assert _weights(tmp_path / "cut") != {}
    train_translator(_cfg(a, b, tmp_path / "cut"))
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert wa.keys() == wb.keys() and any(k.startswith("D.") for k in wa) and any(k.startswith("F.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # a different seed trains different weights (the comparison above can fail)
    train_translator(_cfg(a, b, tmp_path / "other", seed=4))
    assert not all(torch.equal(wa[k], v) for k, v in _weights(tmp_path / "other").items())
    # the run folder follows CONVENTIONS.md
    for name in ("config.json", "log.jsonl", "metrics.json", "checkpoints/last.json", "figures/samples_last.png"):
        assert (tmp_path / "full" / name).is_file(), name


def test_resume_refuses_other_settings(tmp_path):
    from shiftkit.train.translator_loop import train_translator

    a, b = _sets(tmp_path)
    train_translator(_cfg(a, b, tmp_path / "T", steps=1))
    with pytest.raises(ShiftkitError, match="other settings"):
        train_translator(_cfg(a, b, tmp_path / "T", steps=1, ngf=8))


def test_config_validation(tmp_path):
    from shiftkit.train.translator_loop import train_translator

    a, b = _sets(tmp_path)
    for kw in ({"size": 30}, {"steps": 0}, {"batch_size": 0}, {"amp": "fast"}):
        with pytest.raises(ShiftkitError):
            train_translator(_cfg(a, b, tmp_path / "T", **kw))
    with pytest.raises(ShiftkitError):
        train_translator(_cfg(a, tmp_path / "missing", tmp_path / "T"))
    with pytest.raises(ShiftkitError, match="inside"):
        train_translator(_cfg(a, b, a / "T"))


def test_bfloat16_and_channels_last_on_cpu(tmp_path, monkeypatch):
    """`amp="on"` runs both phases under CPU bfloat16 autocast on channels-last inputs; the default does not."""
    from shiftkit.adapt.cut import CUT
    from shiftkit.train.translator_loop import train_translator

    seen = []
    phases = CUT.phases

    def spy(self, real_a, real_b, generator=None, autocast=None):
        if autocast is None:
            seen.append((None, real_a.is_contiguous(memory_format=torch.channels_last)))
        else:
            with autocast():
                seen.append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                             real_a.is_contiguous(memory_format=torch.channels_last)))
        return phases(self, real_a, real_b, generator=generator, autocast=autocast)

    monkeypatch.setattr(CUT, "phases", spy)
    a, b = _sets(tmp_path, channels=3)  # RGB: a 1-channel batch is contiguous in both memory formats
    m = train_translator(_cfg(a, b, tmp_path / "bf16", steps=2, amp="on", channels_last=True))
    assert seen == [(torch.bfloat16, True)] * 2 and m["amp"] == "bfloat16"
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "bf16").values())
    seen.clear()
    m = train_translator(_cfg(a, b, tmp_path / "fp32", steps=2))
    assert seen == [(None, False)] * 2 and m["amp"] is False


def test_cli_train(tmp_path, capsys):
    from shiftkit.cli import main

    a, b = _sets(tmp_path)
    rc = main(["translator", "train", "--source", str(a), "--target", str(b), "--out", str(tmp_path / "T"), "--size", "32",
               "--steps", "2", "--batch-size", "1", "--ngf", "4", "--blocks", "1", "--ndf", "4", "--patches", "8",
               "--fast", "--threads", "1", "--json"])
    assert rc == 0
    import json

    m = json.loads(capsys.readouterr().out)
    assert m["steps"] == 2 and m["preset"] == "fastcut" and m["channels"] == 1
    cfg = json.loads((tmp_path / "T" / "config.json").read_text())
    assert cfg["settings"]["lambda_nce"] == 10.0 and cfg["settings"]["nce_idt"] is False
    rc = main(["translator", "train", "--source", str(a), "--target", str(b), "--out", str(tmp_path / "T2"), "--size", "30"])
    assert rc == 2
