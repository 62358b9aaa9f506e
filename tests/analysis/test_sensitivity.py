import csv
import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.analysis.properties import PropertyTable
from shiftkit.analysis.recommend import recommend_plan
from shiftkit.analysis.sensitivity import Predictions, quantile_edges, sensitivity, wilson_interval
from shiftkit.cli import main
from shiftkit.errors import ShiftkitError


def test_wilson_interval_matches_hand_computation():
    # k=8, n=10: p=0.8, z=1.96 -> (0.4902, 0.9433) (textbook values)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # more data, narrower interval
    assert np.subtract(*wilson_interval(80, 100)[::-1]) < np.subtract(*wilson_interval(8, 10)[::-1])


def test_quantile_edges_equal_counts():
    edges = quantile_edges(np.arange(100, dtype=float), 4)
    assert len(edges) == 5 and edges[0] == 0 and edges[-1] == 99


def _dark_failure_case(n=400, seed=0):
    """Class 'defective' (minority) is misclassified exactly when the image is dark (< 0.3)."""
    rng = np.random.default_rng(seed)
    bright = rng.uniform(0, 1, n)
    contrast = rng.uniform(0.1, 0.3, n)
    y = (rng.uniform(0, 1, n) < 0.3).astype(int)
    pred = y.copy()
    pred[(y == 1) & (bright < 0.3)] = 0
    paths = [f"img{i}.png" for i in range(n)]
    table = PropertyTable(paths, {"brightness": bright, "contrast": contrast})
    return Predictions(list(paths), y, pred, ["functional", "defective"]), table


def test_plan_targets_brightness_in_the_dark_range_for_the_failing_class():
    preds, table = _dark_failure_case()
    sens = sensitivity(preds, table, bins=5)
    worst = sens.worst(1)[0]
    assert worst.property == "brightness" and worst.cls == "defective" and worst.high <= 0.45
    plan = recommend_plan(sens, table, symmetries=("hflip",))
    bright_ops = [o for o in plan.ops if o.op == "brightness_to"]
    assert len(bright_ops) == 1
    op = bright_ops[0]
    assert op.classes == ["defective"] and op.low >= 0.0 and op.high <= 0.45
    assert not any(o.op == "contrast" for o in plan.ops)  # contrast is not where it fails
    assert plan.new_samples["defective"] > 0 and plan.new_samples["functional"] == 0
    assert any("brightness" in r for r in plan.reasoning)


def test_no_failure_no_property_op():
    preds, table = _dark_failure_case()
    preds.pred = preds.y.copy()
    plan = recommend_plan(sensitivity(preds, table), table, symmetries=())
    assert all(o.op not in ("brightness_to", "contrast") for o in plan.ops)


def test_predictions_without_properties_is_a_clear_error():
    preds, table = _dark_failure_case()
    preds.paths[0] = "elsewhere.png"
    with pytest.raises(ShiftkitError, match="no properties"):
        sensitivity(preds, table)


def test_analyze_cli_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    rows = []
    for cls, n in (("functional", 60), ("defective", 30)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(n):
            level = rng.uniform(0.05, 0.95)
            img = np.clip(level * 255 + rng.normal(0, 10, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "d" / cls / f"{i}.png")
            wrong = cls == "defective" and level < 0.35
            pred = "functional" if wrong else cls
            rows.append([f"{cls}/{i}.png", cls, pred])
    with open(tmp_path / "preds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "predicted"])
        w.writerows(rows)
    code = main(["analyze", "--predictions", str(tmp_path / "preds.csv"), "--data", str(tmp_path / "d"),
                 "--out", str(tmp_path / "run"), "--bins", "4", "--json"])
    assert code == 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    ops = {o["op"]: o for o in plan["ops"]}
    assert "brightness_to" in ops and ops["brightness_to"]["high"] < 0.5 and ops["brightness_to"]["classes"] == ["defective"]
    assert (tmp_path / "run" / "figures" / "slices_brightness.png").is_file()
    assert main(["analyze", "--predictions", str(tmp_path / "nope.csv"), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r2")]) == 2


@pytest.mark.parametrize("striped", [False, True])
def test_analyze_cli_checks_rot90_from_the_property_table(tmp_path, monkeypatch, striped):
    """rot90 is judged on the table's orientation column (one decoding pass): kept for isotropic
    noise, dropped when every image has horizontal stripes."""
    import shiftkit.data.formats.dataset as D

    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    decoded = []
    read = D.read_image
    monkeypatch.setattr(D, "read_image", lambda path, *a, **k: decoded.append(path) or read(path, *a, **k))
    rng = np.random.default_rng(2)
    rows = []
    for cls, n in (("functional", 40), ("defective", 20)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(n):
            img = rng.normal(128, 40, (16, 16))
            if striped:
                img[::2] += 80
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp_path / "d" / cls / f"{i}.png")
            rows.append([f"{cls}/{i}.png", cls, cls if i % 3 else "functional"])
    with open(tmp_path / "preds.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "predicted"], *rows])
    assert main(["analyze", "--predictions", str(tmp_path / "preds.csv"), "--data", str(tmp_path / "d"),
                 "--out", str(tmp_path / "run"), "--symmetries", "hflip,rot90", "--json"]) == 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    ops = {o["op"] for o in plan["ops"]}
    assert len(decoded) == 60  # each image once: the check adds no second pass
    assert ("rot90" in ops) is not striped
    assert any(("dropped" if striped else "rot90 kept") in line for line in plan["reasoning"])


def test_plan_square_root_balance_and_symmetry_check():
    preds, table = _dark_failure_case()
    sens = sensitivity(preds, table, bins=5)
    n_def, n_fun = sens.class_counts["defective"], sens.class_counts["functional"]
    full = recommend_plan(sens, table, symmetries=("hflip",))
    sqrt = recommend_plan(sens, table, symmetries=("hflip",), balance="sqrt")
    assert full.new_samples["defective"] == n_fun - n_def
    assert sqrt.new_samples["defective"] == int(np.ceil(np.sqrt(n_def * n_fun))) - n_def
    assert sqrt.balance_rule == "sqrt" and sqrt.to_dict()["balance"]["rule"] == "sqrt"
    assert any("square-root" in r for r in sqrt.reasoning)
    # every training image prefers one orientation: rot90 leaves the plan, with the reason
    oriented = recommend_plan(sens, table, symmetries=("hflip", "rot90"), orientation=np.full(50, -0.6))
    assert [o.op for o in oriented.ops if o.why == "declared label-preserving symmetry"] == ["hflip"]
    assert any("rot90 is dropped" in r for r in oriented.reasoning)
    mixed = recommend_plan(sens, table, symmetries=("hflip", "rot90"), orientation=np.linspace(-1, 1, 50))
    assert [o.op for o in mixed.ops if o.why == "declared label-preserving symmetry"] == ["hflip", "rot90"]
    with pytest.raises(ValueError, match="balance rule"):
        recommend_plan(sens, table, balance="most")
    with pytest.raises(ValueError, match="unknown symmetry"):
        recommend_plan(sens, table, symmetries=("rot45",))
