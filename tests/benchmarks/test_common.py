import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common as C  # noqa: E402


def test_row_medians_and_result_form(tmp_path):
    r = C.Row("dann", False)
    for acc, wall in ((0.5, 10.0), (0.7, 30.0), (0.6, 20.0)):
        r.add({"accuracy": acc}, wall, wall / 2)
    oracle = C.Row("oracle", True, notes="labeled target")
    oracle.add({"accuracy": 0.9}, 5.0)
    res = C.result("demo", [0, 1, 2], [r, oracle], {"paper": "0.8"}, {"metric": "accuracy", "at_least": 0.97})
    d = res["rows"][0]
    assert d["metrics"]["accuracy"] == {"median": 0.6, "values": [0.5, 0.7, 0.6], "spread": pytest.approx(0.2)}
    assert d["wall_s"]["median"] == 20.0 and d["cpu_s"]["median"] == 10.0
    assert res["rows"][1]["uses_target_labels"] is True
    for key in ("benchmark", "command", "date", "machine", "versions", "seeds", "rows", "anchors", "goal"):
        assert key in res
    path = C.write_result(res, tmp_path / "demo.json")
    assert json.loads(path.read_text())["seeds"] == [0, 1, 2]
    text = C.table([r, oracle], ["accuracy"])
    assert "0.6000 (0.500-0.700)" in text and "[target labels]" in text


def test_timer_measures():
    with C.Timer() as t:
        sum(range(10000))
    assert t.wall >= 0 and t.cpu >= 0


def test_merge_results(tmp_path):
    a, b = C.Row("source-only", False), C.Row("oracle", True)
    a.add({"accuracy": 0.7}, 1.0)
    b.add({"accuracy": 0.99}, 1.0)
    goal = {"metric": "accuracy", "at_least": 0.97}
    p1 = C.write_result(C.result("demo", [0], [a], {}, goal), tmp_path / "1.json")
    p2 = C.write_result(C.result("demo", [1], [b], {}, goal), tmp_path / "2.json")
    out = json.loads(C.merge_results([p1, p2], tmp_path / "m.json").read_text())
    assert [r["method"] for r in out["rows"]] == ["source-only", "oracle"] and out["seeds"] == [0, 1]
    # the oracle uses target labels, so it never counts as the best method
    assert out["verdict"]["best_method_without_target_labels"] == "source-only"
    assert out["verdict"]["goal_met_on_this_metric"] is False
    p3 = C.write_result(C.result("other", [0], [a], {}, goal), tmp_path / "3.json")
    with pytest.raises(ValueError):
        C.merge_results([p1, p3], tmp_path / "x.json")


def test_merge_join_rows(tmp_path):
    goal = {"metric": "accuracy", "at_least": 0.97}
    paths = []
    for seed, acc in ((0, 0.9), (1, 0.99), (2, 0.98)):
        r = C.Row("im", False)
        r.add({"accuracy": acc}, 10.0 + seed, 1.0)
        paths.append(C.write_result(C.result("demo", [seed], [r], {}, goal), tmp_path / f"{seed}.json"))
    out = json.loads(C.merge_results(paths, tmp_path / "m.json", join_rows=True).read_text())
    assert len(out["rows"]) == 1
    row = out["rows"][0]
    assert row["metrics"]["accuracy"]["values"] == [0.9, 0.99, 0.98] and row["metrics"]["accuracy"]["median"] == 0.98
    assert row["wall_s"]["median"] == 11.0 and out["verdict"]["goal_met_on_this_metric"] is True
