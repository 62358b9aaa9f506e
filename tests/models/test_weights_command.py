import json

from shiftkit.cli import main


def test_list_json(capsys):
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["weights"]}
    assert rows["mobilenet_v2-imagenet"]["arch"] == "mobilenet_v2"
    assert len(rows["efficientnet_lite0-imagenet"]["sha256"]) == 64


def test_list_table(capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2-imagenet" in out and "b03531047ffa" in out


def test_fetch_and_verify_cached(capsys):
    assert main(["weights", "fetch", "mobilenet_v2-imagenet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert main(["weights", "verify", "mobilenet_v2-imagenet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["results"][0]["status"] == "ok"


def test_errors_are_one_line_exit_2(capsys, tmp_path):
    assert main(["weights", "fetch", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown weights" in err and err.count("\n") == 1
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"123")
    assert main(["weights", "fetch", "mobilenet_v2-imagenet", "--path", str(bad)]) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert main(["weights"]) == 2


def test_verify_detects_a_corrupt_cache(capsys, tmp_path, monkeypatch):
    import shutil

    from shiftkit.resources import cached_path, fetch

    src = fetch("mobilenet_v2-imagenet")
    monkeypatch.setenv("SHIFTKIT_CACHE", str(tmp_path))
    dst = cached_path("mobilenet_v2-imagenet")
    dst.parent.mkdir(parents=True)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as fh:
        fh.write(b"\0")
    assert main(["weights", "verify", "mobilenet_v2-imagenet"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_inspect_reports_keys_and_fit(capsys, tmp_path):
    import torch

    from shiftkit.models.backbones import SmallCNN

    path = tmp_path / "s.pth"
    torch.save(SmallCNN().state_dict(), path)
    assert main(["weights", "inspect", str(path), "--backbone", "small_cnn", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_keys"] == len(SmallCNN().state_dict()) and out["fits"]["ok"]
    assert main(["weights", "inspect", str(path), "--backbone", "mobilenet_v2", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["fits"]["ok"] and "missing" in out["fits"]["error"]
