import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.augment.pipeline import augment_dataset
from shiftkit.augment.policy import OpSpec, Plan, balance_counts, plan_from_ops
from shiftkit.cli import main
from shiftkit.data import open_dataset
from shiftkit.errors import ShiftkitError
from shiftkit.io import sha256_file


def _imagefolder(root, counts=None, size=16):
    counts = counts or {"common": 6, "rare": 2}
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{cls}{i}.png")
    return root


def _hashes(folder):
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_balance_counts_formula():
    assert balance_counts({"a": 10, "b": 3, "c": 0}) == {"a": 0, "b": 7, "c": 0}
    assert balance_counts({"a": 10, "b": 3}, target_ratio=0.5) == {"a": 0, "b": 2}
    assert balance_counts({"a": 10, "b": 3}, classes=["a"]) == {"a": 0, "b": 0}
    with pytest.raises(ShiftkitError, match="unknown classes"):
        balance_counts({"a": 1}, classes=["zzz"])


def test_plan_validation_is_early_and_clear():
    with pytest.raises(ShiftkitError, match="unknown augmentation op"):
        OpSpec("posterize")
    with pytest.raises(ShiftkitError, match="low"):
        OpSpec("brightness", low=2.0, high=1.0)
    with pytest.raises(ShiftkitError, match="ops"):
        Plan.from_dict({"ops": []})
    plan = Plan.from_dict({"ops": [{"op": "blur", "low": 1, "high": 2, "classes": ["rare"]}], "new_samples": {"rare": 3}})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_dict() == plan.to_dict()


def test_balance_grows_only_the_minority_and_keeps_labels(tmp_path):
    ds = open_dataset(_imagefolder(tmp_path / "d"))
    res = augment_dataset(ds, plan_from_ops(["hflip", "brightness", "noise"]), tmp_path / "out", seed=1, progress=False)
    out = open_dataset(tmp_path / "out")
    assert out.class_counts() == {"common": 6, "rare": 6}
    assert res.written_new == {"rare": 4}
    new = [p for p in out.paths() if "__aug" in p]
    assert len(new) == 4 and all(p.startswith("rare/") for p in new)


def test_killed_run_resumes_to_identical_output(tmp_path, monkeypatch):
    ds = open_dataset(_imagefolder(tmp_path / "d"))
    plan = plan_from_ops(["hflip", "rot90", "crop", "contrast", "blur"])
    augment_dataset(ds, plan, tmp_path / "ref", seed=3, progress=False)

    import shiftkit.augment.pipeline as P

    real = P.apply_plan_to_sample
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(P, "apply_plan_to_sample", dying)
    with pytest.raises(KeyboardInterrupt):
        augment_dataset(ds, plan, tmp_path / "run", seed=3, progress=False)
    assert not (tmp_path / "run").exists() and (tmp_path / "run.partial").exists()
    monkeypatch.setattr(P, "apply_plan_to_sample", real)
    augment_dataset(ds, plan, tmp_path / "run", seed=3, progress=False)
    assert _hashes(tmp_path / "run") == _hashes(tmp_path / "ref")


def test_segmentation_masks_follow_geometry(tmp_path):
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nsquare\n")
    for i in range(3):
        img = np.zeros((20, 20, 3), np.uint8)
        mask = np.zeros((20, 20), np.uint8)
        img[2:9, 4 + i : 12 + i] = 200
        mask[2:9, 4 + i : 12 + i] = 1
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    ds = open_dataset(root)
    plan = Plan([OpSpec("hflip", p=1.0), OpSpec("rot90", p=1.0), OpSpec("vflip", p=0.5)])
    augment_dataset(ds, plan, tmp_path / "out", seed=0, copies=1, only_new=True, progress=False)
    out = open_dataset(tmp_path / "out")
    assert len(out) == 3
    for s in out.iter_samples():
        assert np.array_equal(s.image[:, :, 0] == 200, s.target == 1)


def test_cli_balance_and_errors(tmp_path, capsys):
    _imagefolder(tmp_path / "d")
    assert main(["augment", "--data", str(tmp_path / "d"), "--balance", "--ops", "hflip,blur", "--out", str(tmp_path / "o"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_samples"] == {"rare": 4}
    assert main(["augment", "--data", str(tmp_path / "d"), "--balance", "--ops", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown augmentation op" in capsys.readouterr().err


def test_balance_counts_square_root_rule():
    # 754 vs 357 (B1's train half): sqrt(357 * 754) = 518.8 -> 519, so +162 (full balancing: +397)
    assert balance_counts({"f": 754, "d": 357}, rule="sqrt") == {"f": 0, "d": 162}
    assert balance_counts({"f": 754, "d": 357}) == {"f": 0, "d": 397}
    # 75 vs 36 (the small regime): sqrt(2700) = 51.96 -> 52
    assert balance_counts({"f": 75, "d": 36}, rule="sqrt") == {"f": 0, "d": 16}
    assert balance_counts({"a": 100, "b": 1, "c": 0}, rule="sqrt", classes=["b", "c"]) == {"a": 0, "b": 9, "c": 0}
    with pytest.raises(ShiftkitError, match="balance rule"):
        balance_counts({"a": 1}, rule="log")


def test_plan_balance_rule_round_trip_and_validation(tmp_path):
    plan = Plan([OpSpec("hflip", p=0.5)], 1.0, ["rare"], None, ["why"], "sqrt")
    d = plan.to_dict()
    assert d["balance"]["rule"] == "sqrt"
    assert Plan.from_dict(d).balance_rule == "sqrt"
    d["balance"].pop("rule")  # plans written before the rule existed balance fully
    assert Plan.from_dict(d).balance_rule == "full"
    d["balance"]["rule"] = "cube"
    with pytest.raises(ShiftkitError, match="balance.rule"):
        Plan.from_dict(d)
    with pytest.raises(ShiftkitError, match="balance rule"):
        Plan([OpSpec("hflip")], balance_rule="cube")


def test_augment_balances_with_the_plans_rule(tmp_path):
    src = _imagefolder(tmp_path / "src", counts={"common": 9, "rare": 1})
    plan = Plan([OpSpec("hflip", p=1.0)], 1.0, ["rare"], None, [], "sqrt")  # sqrt(9 * 1) = 3 -> +2
    res = augment_dataset(open_dataset(src), plan, tmp_path / "out", seed=0, progress=False)
    assert res.written_new == {"rare": 2}
    assert len(list((tmp_path / "out" / "rare").glob("*.png"))) == 3
