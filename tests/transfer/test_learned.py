"""Transfer method `learned` (a trained CUT translator) and `shiftkit translator score`."""

import json

import numpy as np
import pytest
import torch

from shiftkit.errors import ShiftkitError


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """A translator trained for 2 steps on tiny gray -> RGB sets (weights barely move; enough for the plumbing)."""
    from shiftkit.data import DatasetWriter, Sample
    from shiftkit.train.translator_loop import TranslatorConfig, train_translator

    root = tmp_path_factory.mktemp("translator")
    rng = np.random.default_rng(0)
    with DatasetWriter(root / "A", format="folder") as w:
        for i in range(3):
            w.write(Sample(rng.integers(0, 255, (36, 36, 1), dtype=np.uint8), None, f"a{i}.png"))
    with DatasetWriter(root / "B", format="folder") as w:
        for i in range(3):
            w.write(Sample(rng.integers(0, 100, (36, 36, 3), dtype=np.uint8), None, f"b{i}.png"))
    train_translator(TranslatorConfig(str(root / "A"), str(root / "B"), str(root / "T"), size=32, steps=2, ngf=4, n_blocks=1,
                                      ndf=4, num_patches=8, grid_every=0, progress=False, threads=1))
    return root / "T"


def test_method_keeps_shape_and_channels(translator):
    from shiftkit.transfer.methods import make_method

    m = make_method("learned", translator=translator)
    assert m.name == "learned" and not m.pairs and m.info["channels"] == 3
    for shape in [(2, 1, 20, 28), (1, 3, 50, 40)]:
        y = m(torch.rand(shape))
        assert y.shape == shape and 0 <= float(y.min()) and float(y.max()) <= 1
    u = m.apply_uint8(torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8))
    assert u.dtype == torch.uint8 and u.shape == (1, 1, 16, 16)
    p = m.params()
    assert p["train_size"] == 32 and len(p["sha256"]) == 64


def test_bad_translator_arguments(tmp_path, translator):
    from shiftkit.transfer.learned import LearnedTranslation
    from shiftkit.transfer.methods import make_method

    with pytest.raises(ShiftkitError, match="--translator"):
        make_method("learned")
    with pytest.raises(ShiftkitError):
        LearnedTranslation(tmp_path / "nothing")
    with pytest.raises(ShiftkitError):
        LearnedTranslation(tmp_path)  # a folder without checkpoints
    with pytest.raises(ShiftkitError):
        LearnedTranslation(translator, scale="huge")


def test_pipeline_keeps_masks_and_sizes(tmp_path, make, translator):
    from shiftkit.data import open_dataset
    from shiftkit.transfer.pipeline import TransferConfig, run_transfer

    src = make.segmentation(tmp_path / "S")
    tgt = make.target(tmp_path / "B")
    res = run_transfer(TransferConfig(src, tgt, tmp_path / "S2", method="learned", translator=translator, progress=False, gap=False))
    assert res["written"] == 4
    a, a2 = open_dataset(src), open_dataset(tmp_path / "S2")
    assert a.paths() == a2.paths()
    changed = 0
    for i in range(len(a)):
        s, s2 = a[i], a2[i]
        assert s2.image.shape == s.image.shape
        assert s2.target.tobytes() == s.target.tobytes()  # masks byte-identical
        changed += int(not np.array_equal(s.image, s2.image))
    assert changed == len(a)
    prov = json.loads((tmp_path / "S2" / "shiftkit.json").read_text())
    assert "learned" in json.dumps(prov)
    with pytest.raises(ShiftkitError, match="--translator"):
        TransferConfig(src, tgt, tmp_path / "S3", method="learned")


def test_cli_transfer_learned_mix(tmp_path, make, translator, capsys):
    from shiftkit.cli import main
    from shiftkit.data import open_dataset

    src = make.classification(tmp_path / "A", n=4)
    tgt = make.target(tmp_path / "B")
    rc = main(["transfer", "--source", str(src), "--target", str(tgt), "--method", "learned", "--translator", str(translator),
               "--mix", "--out", str(tmp_path / "A2"), "--no-gap", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    out = open_dataset(tmp_path / "A2")
    assert len(out) == 8 and sum("__learned" in p for p in out.paths()) == 4
    assert sorted(out.labels()) == sorted(open_dataset(src).labels() * 2)


def test_score_on_tiny_sets(tmp_path, make, translator):
    from shiftkit.transfer.learned import score_translator

    src = make.classification(tmp_path / "A", n=8, size=(32, 32))
    tgt = make.target(tmp_path / "B", n=6)
    r = score_translator(translator, src, tgt, max_images=8, feature_size=32, progress=False, gap=True)
    fd = r["frechet"]
    assert fd["a_vs_b"] > 0 and fd["a2_vs_b"] > 0 and "not Inception-FID" in fd["note"]
    lp = r["label_preservation"]
    assert 0 <= lp["accuracy_a"] <= 1 and 0 <= lp["accuracy_a2"] <= 1 and "ratio" in lp
    assert 0 <= lp["domain_standardized"]["accuracy_a2"] <= 1
    assert -1 <= r["geometry"]["a_vs_a2"] <= 1
    assert set(r["gap"]["before"]) == {"properties", "pixels"}


def test_score_segmentation_miou_with_a_source_model(tmp_path, make, translator, capsys):
    """(b) for segmentation: mIoU of a model of A on A' against A's masks, next to its mIoU on A."""
    from shiftkit.models import build_model
    from shiftkit.train.checkpoint import save_weights
    from shiftkit.transfer.learned import score_translator

    src = make.segmentation(tmp_path / "S", n=6)
    tgt = make.target(tmp_path / "B", n=6)
    torch.manual_seed(0)
    net = build_model({"arch": "unet", "in_channels": 3, "num_classes": 2, "base": 4, "depth": 1})
    info = {"spec": net.spec, "classes": ["bg", "crack"], "input_size": [16, 16], "in_channels": 3, "task": "segmentation",
            "ignore_index": 255}
    save_weights(tmp_path / "seg.safetensors", net, info)
    r = score_translator(translator, src, tgt, classifier=str(tmp_path / "seg.safetensors"), max_images=6, feature_size=32,
                         progress=False, gap=False)
    lp = r["label_preservation"]
    assert 0 <= lp["miou_a"] <= 1 and 0 <= lp["miou_a2"] <= 1 and "ratio" in lp
    from shiftkit.cli import main

    capsys.readouterr()
    assert main(["translator", "score", "--translator", str(translator), "--source", str(src), "--target", str(tgt), "--classifier",
                 str(tmp_path / "seg.safetensors"), "--max-images", "6", "--feature-size", "32", "--no-gap", "--no-progress"]) == 0
    assert "label preservation: mIoU A" in capsys.readouterr().out
    with pytest.raises(ShiftkitError):  # a segmentation set with a non-segmentation checkpoint is refused
        info2 = dict(info, task="classification")
        save_weights(tmp_path / "cls.safetensors", net, info2)
        score_translator(translator, src, tgt, classifier=str(tmp_path / "cls.safetensors"), max_images=6, feature_size=32,
                         progress=False, gap=False)


def test_label_preservation_standardized_judge_ignores_a_global_shift():
    """A' = an affine shift of A in feature space: the plain judge loses accuracy, the per-domain
    standardised one keeps it (the labels were never touched); both are against A's labels."""
    import numpy as np

    from shiftkit.transfer.learned import label_preservation_scores

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    fa = rng.normal(size=(80, 6)) + y[:, None] * 1.5
    fa2 = fa * 0.5 + 4.0
    r = label_preservation_scores(None, [], [], y.tolist(), fa, fa2, 0, torch.device("cpu"))
    assert r["accuracy_a"] > 0.8
    assert r["ratio"] < 0.7  # every A' image lands on one side
    assert r["domain_standardized"]["ratio"] > 0.95
    same = label_preservation_scores(None, [], [], y.tolist(), fa, fa.copy(), 0, torch.device("cpu"))
    assert same["ratio"] == 1.0 and same["agreement"] == 1.0


def test_label_preservation_adabn_judge_ignores_a_global_brightness_change(tmp_path):
    """A' = A with a global brightness/contrast change. A checkpoint judge with A's BatchNorm statistics
    loses accuracy on A'; with its statistics re-estimated on each set (AdaBN) it keeps it (the first
    conv is followed by BatchNorm, which cancels a set-wide affine change up to borders and rounding).
    Labels are the judge's own predictions on A."""

    import numpy as np

    from shiftkit.adapt.augmented import adabn
    from shiftkit.data import Sample
    from shiftkit.models import build_model
    from shiftkit.train.checkpoint import save_weights
    from shiftkit.train.loaders import preprocess
    from shiftkit.transfer.learned import label_preservation_scores

    torch.manual_seed(0)
    net = build_model({"arch": "classifier", "backbone": {"name": "small_cnn", "in_channels": 1, "width": 4}, "num_classes": 2})
    rng = np.random.default_rng(0)
    imgs = [(rng.integers(0, 256, (24, 24, 1)) * rng.uniform(0.2, 1.0)).astype(np.uint8) for _ in range(64)]
    a = [Sample(i, 0, f"a{k}.png") for k, i in enumerate(imgs)]
    a2 = [Sample((i * 0.5 + 100).round().astype(np.uint8), 0, f"a{k}.png") for k, i in enumerate(imgs)]
    x = torch.cat([preprocess([s.image], (24, 24), 1) for s in a])
    with torch.no_grad():  # A's statistics, as after training on A; the last bias shifted so that the judge splits A in two
        z = adabn(net, [x]).forward_features(x)[1]
        [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].bias[1] -= (z[:, 1] - z[:, 0]).median()
        y = net.forward_features(x)[1].argmax(1).tolist()
    assert 20 < sum(y) < 44  # both classes present: the test can fail
    save_weights(tmp_path / "j.safetensors", net, {"spec": net.spec, "classes": ["a", "b"], "input_size": [24, 24], "in_channels": 1})
    kw = dict(fa=None, fa2=None, seed=0, device=torch.device("cpu"))
    judged = label_preservation_scores(str(tmp_path / "j.safetensors"), a, a2, y, adabn=True, **kw)
    plain = label_preservation_scores(str(tmp_path / "j.safetensors"), a, a2, y, **kw)
    assert judged["accuracy_a"] > 0.95 and judged["ratio"] >= 0.9 and "AdaBN" in judged["classifier"]
    assert plain["accuracy_a"] == 1.0 and plain["ratio"] < 0.8 and judged["agreement"] > plain["agreement"] + 0.2
    with pytest.raises(ShiftkitError, match="needs --classifier"):
        from shiftkit.transfer.learned import score_translator

        score_translator(tmp_path / "none", tmp_path, tmp_path, adabn=True)
