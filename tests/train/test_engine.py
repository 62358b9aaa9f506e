import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from shiftkit.adapt.base import Method, Phase
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.train import evaluate, fit


def test_fit_trains_improves_and_writes_run_folder(tiny, tmp_path, fast):
    out = tmp_path / "run"
    r = fit(tiny["source"], tiny["target"], target_test=tiny["target_test"], out=out, epochs=6, **fast)
    accs = [h["target_test_accuracy"] for h in r["history"]]
    assert accs[-1] >= 0.9 and accs[-1] > accs[0]
    assert r["history"][-1]["train_loss"] < r["history"][0]["train_loss"]
    for f in ("config.json", "log.jsonl", "metrics.json", "checkpoints/last.safetensors", "checkpoints/last.pt",
              "checkpoints/last.json", "checkpoints/best.safetensors"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["resolved"]["select"] == "label-free" and "torch" in cfg["versions"]
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["event"] == "step"]
    assert steps and "cls" in steps[0] and "lr" in steps[0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["select"] == "label-free" and m["uses_target_labels"] is False
    # the selected checkpoint is the epoch with the best label-free score
    best = max(r["history"], key=lambda h: h["select_im"])
    assert m["selected_epoch"] == best["epoch"]
    # evaluate rebuilds the model from the checkpoint alone and agrees with the engine
    ev = evaluate(out / "checkpoints" / "best.safetensors", tiny["target_test"], progress=False)
    assert ev["accuracy"] == pytest.approx(r["selected"]["target_test_accuracy"])


def test_chunked_cpu_inference_changes_no_figure(tiny, tmp_path, fast, monkeypatch):
    """The engine's epoch scores and `evaluate` give the same figures whether each batch goes through the
    model whole or one image per forward (shiftkit.device.forward_chunked)."""
    kw = dict(target_test=tiny["target_test"], epochs=2, **fast)
    monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", str(10**9))
    whole = fit(tiny["source"], tiny["target"], out=tmp_path / "whole", **kw)
    ev_whole = evaluate(tmp_path / "whole" / "checkpoints" / "best.safetensors", tiny["target_test"], out=tmp_path / "ew",
                        progress=False)
    monkeypatch.setenv("SHIFTKIT_CPU_CHUNK_PIXELS", "1")
    chunked = fit(tiny["source"], tiny["target"], out=tmp_path / "chunked", **kw)
    ev_chunked = evaluate(tmp_path / "chunked" / "checkpoints" / "best.safetensors", tiny["target_test"],
                          out=tmp_path / "ec", progress=False)
    for hw, hc in zip(whole["history"], chunked["history"], strict=True):
        for k in ("select_im", "target_test_accuracy", "train_loss"):
            assert hc[k] == pytest.approx(hw[k], rel=1e-5, abs=1e-6), k
    assert ev_chunked["accuracy"] == ev_whole["accuracy"]
    rows_w = (tmp_path / "ew" / "predictions.csv").read_text().splitlines()
    rows_c = (tmp_path / "ec" / "predictions.csv").read_text().splitlines()
    assert len(rows_w) == len(rows_c) > 1
    for a, b in zip(rows_w[1:], rows_c[1:], strict=True):
        fa, fb = a.split(","), b.split(",")
        assert fa[:3] == fb[:3]
        assert [float(v) for v in fa[3:]] == pytest.approx([float(v) for v in fb[3:]], abs=1e-6)


def test_resume_after_kill_matches_uninterrupted(tiny, tmp_path, fast, kill_at, same_last_weights):
    kw = dict(target_test=tiny["target_test"], method="dann+mcc+self-training", epochs=2, ckpt_every=2, bottleneck=16,
              dropout=0.2, source_jitter=0.3, source_invert=0.5, **fast)  # the recolouring draws resume too
    a = fit(tiny["source"], tiny["target"], out=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny["source"], tiny["target"], out=tmp_path / "b", hooks={"step_end": kill_at(9)}, **kw)
    state = json.loads((tmp_path / "b" / "checkpoints" / "last.json").read_text())
    assert state["global_step"] == 8 and state["epoch"] == 1  # mid-epoch checkpoint
    b = fit(tiny["source"], tiny["target"], out=tmp_path / "b", resume=True, **kw)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k in ("select_im", "target_test_accuracy", "train_loss"):
            assert hb[k] == pytest.approx(ha[k], rel=1e-5, abs=1e-6), k
    keys = same_last_weights(tmp_path / "a", tmp_path / "b", atol=1e-5)
    assert any(k.startswith("discriminator.") for k in keys)
    # wall_s is the resumed invocation's; epochs_s counts both epochs, the one run before the kill included
    epochs = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert b["epochs_s"] == pytest.approx(sum(e["train_s"] + e["eval_s"] for e in epochs), abs=2e-3)


def test_resume_refuses_changed_settings_and_existing_run(tiny, tmp_path, fast):
    fit(tiny["source"], out=tmp_path / "r", epochs=1, **fast)
    with pytest.raises(ShiftkitError, match="--resume"):
        fit(tiny["source"], out=tmp_path / "r", epochs=1, **fast)
    with pytest.raises(ShiftkitError, match="lr"):
        fit(tiny["source"], out=tmp_path / "r", epochs=1, lr=0.5, resume=True, **fast)


def test_corrupt_image_skipped_and_reported(tiny, tmp_path, fast):
    bad = tiny["source"] / "left" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = fit(tiny["source"], out=tmp_path / "skip", epochs=1, **fast)
    assert r["skipped_images"] == ["left/broken.png"]
    log = (tmp_path / "skip" / "log.jsonl").read_text()
    assert '"bad_image"' in log and "left/broken.png" in log
    with pytest.raises(DatasetError, match="broken.png"):
        fit(tiny["source"], out=tmp_path / "fail", epochs=1, on_bad="fail", **fast)
    assert not (tmp_path / "fail" / "checkpoints" / "last.json").exists()


def test_label_free_selection_never_reads_target_labels(tiny, tmp_path, fast):
    # the same target-test images with the class folders swapped: every label is wrong
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny["target_test"] / "left", swapped / "right")
    shutil.copytree(tiny["target_test"] / "right", swapped / "left")
    kw = dict(method="mcc", epochs=3, **fast)
    a = fit(tiny["source"], tiny["target"], target_test=tiny["target_test"], out=tmp_path / "a", **kw)
    b = fit(tiny["source"], tiny["target"], target_test=swapped, out=tmp_path / "b", **kw)
    assert a["select"] == b["select"] == "label-free"
    assert a["selected_epoch"] == b["selected_epoch"]
    assert [h["select_im"] for h in a["history"]] == [h["select_im"] for h in b["history"]]
    assert [h["target_test_accuracy"] for h in a["history"]] == pytest.approx(
        [1 - h["target_test_accuracy"] for h in b["history"]])


def test_freeze_backbone_trains_on_cached_features(tiny, tmp_path, fast):
    kw = dict(target_test=tiny["target_test"], freeze_backbone=True, epochs=3, feature_cache=str(tmp_path / "cache"),
              method="dann", **fast)
    r = fit(tiny["source"], tiny["target"], out=tmp_path / "f1", **kw)
    assert any((tmp_path / "cache").rglob("*.npz"))
    ev = evaluate(tmp_path / "f1" / "checkpoints" / "best.safetensors", tiny["target_test"], progress=False)
    assert ev["accuracy"] == pytest.approx(r["selected"]["target_test_accuracy"])
    r2 = fit(tiny["source"], tiny["target"], out=tmp_path / "f2", **kw)
    assert [h["select_im"] for h in r2["history"]] == pytest.approx([h["select_im"] for h in r["history"]])


class TwoPhase(Method):
    """AdaptSegNet-shaped: phase 1 updates the model, phase 2 (lazy) the discriminator on detached features."""

    name = "two-phase"

    def setup(self, engine):
        self.disc = torch.nn.Linear(engine.feature_dim, 1)

    def modules(self):
        return {"discriminator": self.disc}

    def phases(self, net, batch, step):
        from shiftkit.adapt.losses import cross_entropy, domain_bce

        fs, zs = net(batch["source"]["x"])
        ft, _ = net(batch["target"]["x"])
        self.before = self.disc.weight.detach().clone()
        adv = domain_bce(self.disc(ft), self.disc(fs))  # fool D: target looks like source
        p1 = Phase({"cls": cross_entropy(zs, batch["source"]["y"]), "adv": 0.01 * adv}, ("model",))

        def disc_losses():
            self.seen_update = not torch.equal(self.before, self.disc.weight)
            return {"disc": domain_bce(self.disc(fs.detach()), self.disc(ft.detach()))}

        return [p1, Phase(disc_losses, ("discriminator",))]


class SeesBatches(Method):
    """Source-only, recording the images each step hands it."""

    name = "sees-batches"
    streams = ("source", "target")

    def __init__(self):
        self.seen = []

    def phases(self, net, batch, step):
        from shiftkit.adapt.losses import cross_entropy

        self.seen.append({k: batch[k]["x"].clone() for k in self.streams})
        return [Phase({"cls": cross_entropy(net(batch["source"]["x"])[1], batch["source"]["y"])}, ("model",))]


def test_source_recolouring_changes_source_images_only(tiny, tmp_path, fast):
    runs = {}
    for name, opts in (("plain", {}), ("inverted", {"source_invert": 1.0}), ("jitter", {"source_jitter": 0.5})):
        m = SeesBatches()
        fit(tiny["source"], tiny["target"], method=m, out=tmp_path / name, epochs=1, **opts, **fast)
        runs[name] = m.seen
        assert json.loads((tmp_path / name / "config.json").read_text())["source_invert"] == opts.get("source_invert", 0.0)
    for plain, inv, jit in zip(runs["plain"], runs["inverted"], runs["jitter"], strict=True):
        assert torch.allclose(inv["source"], 1 - plain["source"]) and torch.equal(inv["target"], plain["target"])
        assert not torch.equal(jit["source"], plain["source"]) and torch.equal(jit["target"], plain["target"])
        assert jit["source"].min() >= 0 and jit["source"].max() <= 1
    for bad, match in (({"source_invert": 1.5}, "--source-invert"), ({"source_jitter": -0.1}, "--source-jitter"),
                       ({"source_jitter": 0.3, "freeze_backbone": True}, "cached features")):
        with pytest.raises(ShiftkitError, match=match):
            fit(tiny["source"], out=tmp_path / "bad", epochs=1, **bad, **fast)


def test_two_phase_method_runs_and_updates_both_groups(tiny, tmp_path, fast):
    m = TwoPhase()
    r = fit(tiny["source"], tiny["target"], method=m, out=tmp_path / "two", epochs=1, bottleneck=8, **fast)
    assert m.seen_update is False  # phase 1 must not step the discriminator
    steps = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines() if '"step"' in x]
    assert "disc" in steps[0] and "loss_phase1" in steps[0]
    assert r["method"] == "two-phase"


def test_bad_settings_fail_up_front(tiny, tmp_path, fast):
    with pytest.raises(ShiftkitError, match="epochs"):
        fit(tiny["source"], out=tmp_path / "x", epochs=0, **fast)
    with pytest.raises(ShiftkitError, match="unknown fit"):
        fit(tiny["source"], out=tmp_path / "x", bogus=1, **fast)
    with pytest.raises(ShiftkitError, match="method"):
        fit(tiny["source"], tiny["target"], out=tmp_path / "x", method="dann+cdan", **fast)
    with pytest.raises(ShiftkitError, match="target"):
        fit(tiny["source"], out=tmp_path / "y", method="dann", **fast)
    with pytest.raises(DatasetError):
        fit(tmp_path / "nope", out=tmp_path / "z", **fast)


def test_options_smoke_and_init_from_checkpoint(tiny, tmp_path, fast):
    r = fit(tiny["source"], tiny["target"], target_test=tiny["target_test"], out=tmp_path / "o", epochs=2,
            optimizer="sgd", nesterov=True, grad_clip=1.0, class_weights="balanced", balanced_sampling=True,
            freeze_stages=1, freeze_bn=True, channels_last=True, iters_per_epoch=3, select="label-free",
            select_score="snd", eval_every=2, label_smoothing=0.1, method="cdan+mcc", **fast)
    assert [h["epoch"] for h in r["history"]] == [0, 1] and "select_snd" in r["history"][1]
    assert "select_im" not in r["history"][0]  # eval_every=2: first epoch not evaluated
    assert r["selected_epoch"] == 1
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["resolved"]["iters_per_epoch"] == 3 and cfg["optimizer"] == "sgd"
    r2 = fit(tiny["source"], out=tmp_path / "init", init=str(tmp_path / "o" / "checkpoints" / "best.safetensors"),
             epochs=1, **fast)
    assert r2["selected_epoch"] == 0


def test_amp_on_trains_in_bfloat16_on_cpu_and_keeps_float32_weights(tiny, tmp_path, fast):
    """--amp on: CPU steps run under bfloat16 autocast (the dtype is recorded), weights and
    checkpoints stay float32, and training still learns the tiny task."""
    out = tmp_path / "bf16"
    r = fit(tiny["source"], tiny["target"], target_test=tiny["target_test"], out=out, epochs=6, amp="on",
            channels_last=True, device="cpu", **fast)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved"]["amp"] == "bfloat16"
    assert r["history"][-1]["target_test_accuracy"] >= 0.9
    w = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert {t.dtype for t in w.values() if t.is_floating_point()} == {torch.float32}


def test_amp_dtype_per_device_and_mode():
    from shiftkit.device import amp_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "off") is None
    assert amp_dtype(cpu, "on") == torch.bfloat16
    assert amp_dtype(cuda, "auto") == torch.float16 and amp_dtype(cuda, "off") is None
    with pytest.raises(ShiftkitError, match="amp"):
        amp_dtype(cpu, "yes")
