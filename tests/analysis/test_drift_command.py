import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.cli import main


def _folder(root, n, lo, hi, seed):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(lo, hi, (24, 20, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")


@pytest.fixture
def two_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path / "a", 20, 0, 256, 0)
    _folder(tmp_path / "b", 20, 0, 100, 1)
    return tmp_path


def test_drift_command_writes_run_folder(two_sets, capsys):
    out = two_sets / "run"
    args = ["drift", "--source", str(two_sets / "a"), "--target", str(two_sets / "b"), "--out", str(out),
            "--workers", "0", "--no-progress", "--work-size", "16", "--plots", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "brightness" in text and "gap score" in text and str(out) in text
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["work_size"] == 16 and "versions" in config
    ks = [r["ks"] for r in metrics["properties"]]
    assert ks == sorted(ks, reverse=True) and metrics["properties"][0]["ks"] > 0.9
    assert metrics["gap"]["properties"]["accuracy"] > 0.9
    assert len(metrics["figures"]) == 3 and "figures/gap_score.png" in metrics["figures"] and all((out / f).is_file() for f in metrics["figures"])
    assert (out / "properties_source.csv").is_file()
    # --json: machine output only on stdout, same figures; second run reads the cache
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cached"] == {"source": 20, "target": 20}
    assert data["gap"]["properties"]["accuracy"] == metrics["gap"]["properties"]["accuracy"]


def test_drift_command_bad_input(two_sets, capsys):
    assert main(["drift", "--source", str(two_sets / "missing"), "--target", str(two_sets / "b"),
                 "--out", str(two_sets / "r")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["drift", "--source", str(two_sets / "a"), "--target", str(two_sets / "b"),
                 "--out", str(two_sets / "r"), "--folds", "1"]) == 2
