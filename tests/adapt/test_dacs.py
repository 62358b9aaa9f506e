"""DACS: ClassMix helpers, the weighted mixed loss, the EMA teacher, and the method in the engine."""

import json

import pytest
import torch

from shiftkit.adapt.dacs import (
    DACS,
    blur_kernel_size,
    class_mix,
    ema_update,
    mix_classes,
)
from shiftkit.adapt.seg_base import build_seg_method
from shiftkit.adapt.seg_losses import seg_cross_entropy
from shiftkit.errors import ShiftkitError

from .test_seg_methods import _batch, _run_step, _setup, _snapshot


def test_class_mix_by_hand():
    xa, xb = torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 0.0)
    ya, yb = torch.tensor([[0, 1], [2, 255]]), torch.tensor([[5, 5], [5, 5]])
    x, y, m = class_mix(xa, ya, xb, yb, torch.tensor([1, 2]))
    assert y.tolist() == [[5, 1], [2, 5]]
    assert x[0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert m.tolist() == [[False, True], [True, False]]  # the pasted pixels
    # half the present classes (ceil), ignore never drawn; nothing present -> nothing pasted
    g = torch.Generator().manual_seed(0)
    drawn = mix_classes(ya, g)
    assert len(drawn) == 2 and set(drawn.tolist()) <= {0, 1, 2}
    empty = mix_classes(torch.full((2, 2), 255), g)
    assert empty.numel() == 0
    assert torch.equal(class_mix(xa, ya, xb, yb, empty)[0], xb)
    with pytest.raises(ValueError, match="agree"):
        class_mix(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(1, 3, 3), torch.zeros(3, 3), torch.tensor([0]))


def test_pixel_weighted_cross_entropy_by_hand():
    z = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2 pixels)
    y = torch.tensor([[[0, 1]]])
    ce = [-torch.log_softmax(z[0, :, 0, p], 0)[y[0, 0, p]] for p in range(2)]
    q = torch.tensor([[[0.5, 0.25]]])
    assert seg_cross_entropy(z, y, pixel_weight=q).item() == pytest.approx(float((0.5 * ce[0] + 0.25 * ce[1]) / 2))
    assert seg_cross_entropy(z, y, pixel_weight=torch.ones(1, 1, 2)).item() == pytest.approx(seg_cross_entropy(z, y).item())
    w = torch.tensor([1.0, 3.0])  # the class weights normalise, the pixel weights do not
    want = (0.5 * 1 * ce[0] + 0.25 * 3 * ce[1]) / (1 + 3)
    assert seg_cross_entropy(z, y, weight=w, pixel_weight=q).item() == pytest.approx(float(want))
    y_ign = torch.tensor([[[0, 255]]])
    assert seg_cross_entropy(z, y_ign, pixel_weight=q).item() == pytest.approx(float(0.5 * ce[0]))
    with pytest.raises(ValueError, match="pixel_weight"):
        seg_cross_entropy(z, y, pixel_weight=torch.ones(1, 2, 1))


def test_blur_kernel_and_ema_by_hand():
    # DACS: floor(ceil(0.1 side) - 0.5 + ceil(0.1 side) % 2)
    assert [blur_kernel_size(s) for s in (16, 32, 45, 100, 512)] == [3, 3, 5, 9, 51]
    t, s = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for p in t.parameters():
        p.data.fill_(0.0)
    for p in s.parameters():
        p.data.fill_(1.0)
    ema_update(t, s, 0.99)
    assert all(torch.allclose(p, torch.full_like(p, 0.01)) for p in t.parameters())


def test_mix_weights_are_one_on_source_pixels_and_q_elsewhere():
    m = DACS()
    xs, xt = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    ys = torch.tensor([[[1, 1], [0, 0]]])
    yt = torch.tensor([[[2, 2], [2, 2]]])
    torch.manual_seed(0)
    xm, ym, wm = m.mix(xs, ys, xt, yt, torch.tensor(0.25))
    pasted = ym[0] != 2
    assert pasted.any() and (~pasted).any()  # one of the two present classes (ceil(2 / 2) = 1)
    assert torch.equal(xm[0, 0] == 1, pasted) and torch.equal(ym[0][pasted], ys[0][pasted])
    assert torch.equal(wm[0], torch.where(pasted, 1.0, 0.25))


def test_pseudo_weight_is_the_share_of_confident_pixels():
    class Fixed(torch.nn.Module):
        def forward_multi(self, x):
            z = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            z[:, 0, :, :1] = 10.0  # the left column is confident class 0, the right one 50/50
            return [z]

    lab, q = DACS(tau=0.968).pseudo_labels(Fixed(), torch.zeros(2, 3, 2, 2))
    assert q.item() == pytest.approx(0.5) and (lab[:, :, 0] == 0).all()


def test_one_step_trains_the_student_and_the_teacher_follows_by_ema():
    model, m, opts, _ = _setup("dacs")
    before = _snapshot(model)
    rec = _run_step(m, model, opts, _batch(), step=0)
    assert set(rec[0][1]) == {"seg", "seg_aux", "mix", "mix_aux"} and rec[0][0] == ("model",)
    teacher0 = _snapshot(m.teacher)
    assert all(torch.equal(a, b) for a, b in zip(teacher0, before, strict=True))  # created from the student at step 0
    assert not any(p.requires_grad for p in m.teacher.parameters())
    after1 = _snapshot(model)
    _run_step(m, model, opts, _batch(seed=1), step=1)  # a = min(1 - 1/2, 0.99) = 0.5
    for t, t0, s1 in zip(m.teacher.parameters(), teacher0, after1, strict=True):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s1, atol=1e-6)


@pytest.mark.parametrize("mix_class_weights", [False, True])
def test_mixed_loss_is_unweighted_by_class_unless_asked(mix_class_weights):
    from shiftkit.adapt.base import StepInfo
    from shiftkit.adapt.seg_base import levels

    w = torch.tensor([0.5, 2.0, 1.0])
    model, m, _, _ = _setup("dacs", class_weights=w.tolist(), mix_class_weights=mix_class_weights, jitter_p=0.0,
                            blur_p=0.0)
    seen, mix = {}, m.mix
    m.mix = lambda *a: seen.setdefault("out", mix(*a))
    model.eval()  # BatchNorm on running statistics: the mixed logits do not depend on the source half of the batch
    losses = m.phases(model, _batch(), StepInfo(0, 0, 4))[0].resolve()
    xm, ym, wm = seen["out"]
    with torch.no_grad():
        z = levels(model, xm)[0]
    plain = seg_cross_entropy(z, ym, pixel_weight=wm).item()
    weighted = seg_cross_entropy(z, ym, weight=w, pixel_weight=wm).item()
    assert plain != pytest.approx(weighted, rel=1e-3)
    assert losses["mix"].item() == pytest.approx(weighted if mix_class_weights else plain, rel=1e-4)
    assert m.config()["mix_class_weights"] is mix_class_weights


def test_teacher_survives_a_state_round_trip():
    model, m, opts, _ = _setup("dacs")
    _run_step(m, model, opts, _batch(), step=0)
    _run_step(m, model, opts, _batch(seed=1), step=1)
    state = m.state_dict()
    assert state and all(k.startswith("teacher.") for k in state)
    fresh = build_seg_method("dacs")
    fresh.load_state_dict(state)
    assert fresh.state_dict().keys() == state.keys()  # kept before the teacher exists
    fresh._teacher_for(model, 0)  # created from the student, then the stored weights
    for k, v in fresh.teacher.state_dict().items():
        assert torch.equal(v, state[f"teacher.{k}"]), k
    with pytest.raises(ValueError, match="teacher"):
        fresh.load_state_dict({"pseudo": torch.zeros(1)})


def test_bad_options_refused():
    for bad in ({"alpha": 1.5}, {"tau": 0.0}, {"jitter_p": -0.1}, {"blur_p": True}, {"lambda_mix": -1}, {"nope": 1}):
        with pytest.raises(ShiftkitError):
            build_seg_method("dacs", **bad)


def test_engine_runs_dacs_and_resumes_after_a_kill(tmp_path, seg_folder, kill_at, same_last_weights):
    from shiftkit.adapt.registry import build_method
    from shiftkit.train import fit

    assert build_method("dacs").name == "dacs"
    src, tgt = seg_folder(tmp_path / "src", 8, 0), seg_folder(tmp_path / "tgt", 8, 1, 0.15)
    fast = {"task": "segmentation", "method": "dacs", "backbone": "small_cnn", "size": 16, "batch_size": 4,
            "progress": False, "log_every": 1, "epochs": 2, "iters_per_epoch": 3, "lr": 3e-3, "seed": 0}
    fit(src, tgt, out=tmp_path / "whole", **fast)
    with pytest.raises(KeyboardInterrupt):
        fit(src, tgt, out=tmp_path / "killed", hooks={"step_end": kill_at(4)}, **fast)
    fit(src, tgt, out=tmp_path / "killed", resume=True, **fast)
    same_last_weights(tmp_path / "whole", tmp_path / "killed")
    steps = [json.loads(s) for s in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert any("mix" in s and "pseudo_weight" in s for s in steps if s.get("event") == "step")
