"""The augmentation experiment's own logic (splits, budgets, blind plan, verdict, merging); no training."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common as C  # noqa: E402
import elpv_defect_augment as E  # noqa: E402


def test_stratified_pick_keeps_class_shares_and_is_seeded():
    labels = [0] * 754 + [1] * 357
    idx = E.stratified_pick(labels, 0.10, seed=3)
    picked = [labels[i] for i in idx]
    assert picked.count(0) == 75 and picked.count(1) == 36  # round(75.4), round(35.7)
    assert len(set(idx)) == len(idx)
    assert idx == E.stratified_pick(labels, 0.10, seed=3)
    assert idx != E.stratified_pick(labels, 0.10, seed=4)
    tiny = [0] * 5 + [1] * 3
    assert [tiny[i] for i in E.stratified_pick(tiny, 0.01, 0)] == [0, 0, 1, 1]  # at least 2 per class


def test_stratified_folds_partition_the_set():
    labels = [0] * 7 + [1] * 4
    folds = E.stratified_folds(labels, 2, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(11))
    assert [sum(labels[i] for i in f) for f in folds] == [2, 2]  # defectives split evenly
    assert sorted(len(f) for f in folds) == [5, 6]


def test_analysis_bins_rule():
    assert E.analysis_bins({"defective": 36, "functional": 75}, "auto") == 3
    assert E.analysis_bins({"defective": 357, "functional": 754}, "auto") == 5
    assert E.analysis_bins({"defective": 5, "functional": 75}, "auto") == 2
    assert E.analysis_bins({"defective": 357, "functional": 754}, "4") == 4


def test_blind_plan_adds_exactly_n_split_by_class_size(tmp_path):
    from shiftkit.augment.policy import Plan

    path = E.blind_plan({"functional": 75, "defective": 36}, 39, tmp_path / "blind.json")
    plan = Plan.load(path)
    assert sum(plan.new_samples.values()) == 39
    assert plan.new_samples == {"functional": 26, "defective": 13}  # 26.35 and 12.65, largest remainder
    assert {o.op for o in plan.ops} == set(E.BLIND_OPS) and all(o.classes is None for o in plan.ops)


def test_symmetry_plan_only_grows_the_minority(tmp_path):
    from shiftkit.augment.policy import Plan

    plan = Plan.load(E.symmetry_plan("defective", 12, tmp_path / "sym.json"))
    assert plan.new_samples == {"defective": 12}
    assert {o.op for o in plan.ops} == {"hflip", "vflip", "rot90"}


def _rows(base, guided, blind):
    rows = {}
    for name, (acc, rec) in (("baseline", base), ("guided", guided), ("blind", blind)):
        rows[name] = C.Row(name, False)
        rows[name].add({"accuracy": acc, "recall_defective": rec}, 1.0)
    return rows


def test_verdict_small_needs_recall_gain_at_equal_accuracy_and_beating_blind():
    ok = E.verdict_for("small", _rows((0.80, 0.60), (0.81, 0.66), (0.80, 0.59)))
    assert ok["met"] is True and ok["guided_minus_baseline"] == {"accuracy": 0.01, "recall_defective": 0.06}
    assert E.verdict_for("small", _rows((0.80, 0.60), (0.79, 0.70), (0.78, 0.59)))["met"] is False  # accuracy lost
    assert E.verdict_for("small", _rows((0.80, 0.60), (0.80, 0.64), (0.79, 0.59)))["met"] is False  # +4 recall only
    assert E.verdict_for("full", _rows((0.86, 0.65), (0.86, 0.65), (0.85, 0.6)))["met"] is True
    assert E.verdict_for("full", _rows((0.86, 0.65), (0.85, 0.74), (0.85, 0.6)))["met"] is False


def test_combine_tags_variants_and_keeps_every_command(tmp_path):
    def part(name, regime, cw):
        row = C.Row(f"{regime}/baseline", False)
        row.add({"accuracy": 0.8}, 1.0)
        res = C.result(E.BENCH, [0], [row], E.ANCHORS, E.GOAL,
                       {"class_weights": cw, "model": "frozen", "per_seed": {f"{regime}/seed0": {}}, "complete": True},
                       {regime: {"met": False}})
        return C.write_result(res, tmp_path / name)

    out = E.combine([str(part("a.json", "small", "none")), str(part("b.json", "small", "balanced"))], tmp_path / "all.json")
    d = json.loads(Path(out).read_text())
    assert [r["method"] for r in d["rows"]] == ["small/baseline", "small/baseline (class weights balanced)"]
    assert set(d["verdict"]) == {"small", "small (class weights balanced)"}
    assert set(d["settings"]["per_seed"]) == {"small/seed0", "small/seed0 (class weights balanced)"}
    assert d["command"].count(" && ") == 1 and d["settings"]["complete"] is True


def test_combine_path_tag_and_notes(tmp_path):
    row = C.Row("small/guided", False)
    row.add({"accuracy": 0.8}, 1.0)
    res = C.result(E.BENCH, [0], [row], E.ANCHORS, E.GOAL, {"class_weights": "balanced", "complete": False}, {"small": {}})
    part = C.write_result(res, tmp_path / "a.json")
    out = E.combine([f"{part}::op v1"], tmp_path / "all.json", ["why v1"])
    d = json.loads(Path(out).read_text())
    assert d["rows"][0]["method"] == "small/guided (class weights balanced, op v1)"
    assert d["notes"] == ["why v1"] and d["settings"]["complete"] is False and d["parts"][0]["tag"] == "op v1"
