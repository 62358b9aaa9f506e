import csv
import json

from shiftkit.cli import main


def test_cli_train_evaluate_predict(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--source", str(tiny["source"]), "--target", str(tiny["target"]), "--target-test",
            str(tiny["target_test"]), "--method", "cdan+e", "--epochs", "2", "--batch-size", "8", "--size", "16",
            "--out", str(out), "--no-progress", "--json", "--method-option", "disc_hidden=16"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "cdan+e" and r["select"] == "label-free" and "target_test_accuracy" in r
    ckpt = out / "checkpoints" / "best.safetensors"
    assert main(["evaluate", "--model", str(ckpt), "--data", str(tiny["target_test"]), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "balanced accuracy" in text and "run folder" in text
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert len(rows) == 24 and set(rows[0]) >= {"path", "label", "predicted", "prob_left", "prob_right"}
    assert abs(float(rows[0]["prob_left"]) + float(rows[0]["prob_right"]) - 1) < 1e-4
    assert (tmp_path / "ev" / "figures" / "confusion.png").is_file()
    assert main(["predict", "--model", str(ckpt), "--data", str(tiny["target"]), "--out", str(tmp_path / "p.csv"),
                 "--no-progress", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["n"] == 32 and sum(p["predicted_counts"].values()) == 32


def test_cli_errors_are_one_line_exit_2(tiny, tmp_path, capsys):
    assert main(["train", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert main(["evaluate", "--model", str(tmp_path / "none.safetensors"), "--data", str(tiny["target_test"])]) == 2
    assert main(["train", "--source", str(tiny["source"]), "--out", str(tmp_path / "o2"), "--method", "nope"]) == 2
