"""`python -m shiftkit.demo` on a tiny subset: every step runs and the run folder is complete."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("elpv_dataset")


def test_demo_small(tmp_path, monkeypatch, capsys):
    from shiftkit.demo import main

    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    rc = main(["--out", str(out), "--limit", "10", "--grid", "2", "--no-progress", "--device", "cpu", "--json"])
    metrics = json.loads(capsys.readouterr().out)
    steps = metrics["steps"]
    assert rc == 0, steps
    assert all(v["status"] == "ok" for v in steps.values())
    assert metrics["data"]["sizes"] == {"source": 10, "target": 10, "target-test": 10}
    assert (out / "figures" / "mono_to_poly.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["benchmark"] == "elpv-mono2poly"
    eff = metrics["transfer"]["effect"]["methods"]
    assert set(eff) == {"none", "fda", "histogram"} and all(0 <= v["mean_ks"] <= 1 for v in eff.values())
    assert metrics["drift"]["gap"]["properties"]["accuracy"] >= 0.0
    adapt = metrics["adapt"]["methods"]
    assert set(adapt) == {"source-only", "mcc"} and all(0.0 <= v["balanced_accuracy"] <= 1.0 for v in adapt.values())
    assert (out / "adapt" / "mcc" / "checkpoints" / "best.safetensors").is_file()
    tr = metrics["translate"]
    assert tr["steps"] == 4 and tr["amp"] == "bfloat16" and -1.0 <= tr["edge_alignment"] <= 1.0
    assert (out / "figures" / "mono_to_poly_cut.png").stat().st_size > 1000
    assert (out / "translator" / "checkpoints" / "last.safetensors").is_file()
    rec = metrics["recolour"]
    assert (rec["jitter"], rec["invert"], rec["draws"]) == (0.3, 0.5, 3)
    assert (out / "figures" / "mono_recoloured.png").stat().st_size > 1000
    # another --limit in the same folder is refused before anything is written; --overwrite starts again
    assert main(["--out", str(out), "--limit", "12", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--limit 10" in err and "--overwrite" in err
    assert json.loads((out / "config.json").read_text())["limit"] == 10


def test_demo_overwrite_removes_only_its_own_outputs(tmp_path):
    from shiftkit.demo import Demo

    out = tmp_path / "demo"
    for name in ("data/source", "adapt/mcc", "translator", "figures"):
        (out / name).mkdir(parents=True)
    (out / "config.json").write_text('{"seed": 0, "limit": 10}')
    (out / "notes.txt").write_text("mine")
    demo = Demo(out, 1, "cpu", False, 12)
    Demo(out, 0, "cpu", False, 10).check_out()  # the same run: resumed
    from shiftkit.errors import ShiftkitError

    with pytest.raises(ShiftkitError, match="--seed 0 --limit 10"):
        demo.check_out()
    demo.check_out(overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_demo_bad_args(capsys):
    from shiftkit.demo import main

    assert main(["--limit", "3"]) == 2
    assert "--limit" in capsys.readouterr().err
