import csv
import json
from pathlib import Path

import numpy as np
import pytest

from shiftkit.cli import main
from shiftkit.data import open_dataset
from shiftkit.errors import ShiftkitError
from shiftkit.transfer.pipeline import TransferConfig, output_path, run_transfer


def _cfg(src, tgt, out, **kw):
    kw.setdefault("gap", False)
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return TransferConfig(source=src, target=tgt, out=out, **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pairs(out: Path) -> list[dict]:
    with open(out / "pairs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_output_path_suffix():
    assert output_path("cls/a.png", False, "__fda") == "cls/a.png"
    assert output_path("cls/a.b.png", True, "__fda") == "cls/a.b__fda.png"
    assert output_path("a", True, "__x") == "a__x"


@pytest.mark.parametrize("method, extra", [("fda", {"beta": 0.2}), ("histogram", {}), ("histogram", {"reference": "set"}),
                                           ("color-stats", {}), ("color-stats", {"reference": "set", "pair": "nearest"}), ("pca", {})])
def test_classification_keeps_labels_format_and_channels(datasets, method, extra):
    a, b, out = datasets["A"], datasets["B"], datasets["tmp"] / "out"
    res = run_transfer(_cfg(a, b, out, method=method, batch_size=3, **extra))
    src, dst = open_dataset(a), open_dataset(out)
    assert res["written"] == len(src) == len(dst) and dst.format == "imagefolder"
    assert dst.paths() == src.paths() and dst.labels() == src.labels()
    changed = 0
    for i in range(len(src)):
        s, d = src[i].image, dst[i].image
        assert d.shape == s.shape  # gray source stays gray even with an RGB target
        changed += int(not np.array_equal(s, d))
    assert changed > 0
    rows = _pairs(out)
    assert [r["source"] for r in rows] == src.paths()
    targets = set(open_dataset(b).paths())
    for r in rows:
        assert (r["target"] in targets) if extra.get("reference") != "set" and method != "pca" else r["target"] == ""
    prov = json.loads((out / "shiftkit.json").read_text())["provenance"]
    assert prov["method"] == method and prov["seed"] == 0 and prov["pairs_file"] == "pairs.csv"
    assert (datasets["tmp"] / "out.figures" / "grid.png").is_file()


def test_fda_result_matches_functional(datasets):
    import torch

    from shiftkit.transfer import functional as TF

    a, b, out = datasets["A"], datasets["B"], datasets["tmp"] / "out"
    run_transfer(_cfg(a, b, out, method="fda", beta=0.1))
    src, tgt, dst = open_dataset(a), open_dataset(b), open_dataset(out)
    row = _pairs(out)[3]
    s = src[src.paths().index(row["source"])].image
    t = tgt[tgt.paths().index(row["target"])].image
    x = torch.from_numpy(s).permute(2, 0, 1)[None].float() / 255
    y = torch.from_numpy(t).permute(2, 0, 1)[None].float() / 255
    ref = (TF.fda(x, y, 0.1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(dst[dst.paths().index(row["output"])].image, ref)


def test_segmentation_masks_byte_identical_with_mix(tmp_path, make):
    a, b = make.segmentation(tmp_path / "S"), make.target(tmp_path / "B", c=1)
    out = tmp_path / "out"
    run_transfer(_cfg(a, b, out, method="histogram", mix=True))
    src, dst = open_dataset(a), open_dataset(out)
    assert dst.format == "segmentation" and len(dst) == 2 * len(src)
    for rel in src.paths():
        stem = Path(rel).stem
        m = (a / "masks" / f"{stem}.png").read_bytes()
        assert (out / "masks" / f"{stem}.png").read_bytes() == m
        assert (out / "masks" / f"{stem}__histogram.png").read_bytes() == m
        assert (out / "images" / f"{stem}.png").read_bytes() == (a / "images" / f"{stem}.png").read_bytes()
        assert (out / "images" / f"{stem}__histogram.png").is_file()


@pytest.mark.parametrize("fmt", ["yolo", "coco"])
def test_detection_boxes_unchanged(tmp_path, fmt, make):
    a, b = make.detection(tmp_path / "D", fmt), make.target(tmp_path / "B")
    out = tmp_path / "out"
    run_transfer(_cfg(a, b, out, method="color-stats"))
    src, dst = open_dataset(a), open_dataset(out)
    assert dst.format == fmt and dst.paths() == src.paths()
    for i in range(len(src)):
        assert dst[i].target == src[i].target
    if fmt == "yolo":
        for p in sorted((a / "labels").iterdir()):
            assert (out / "labels" / p.name).read_bytes() == p.read_bytes()
    else:
        ja, jb = json.loads((a / "annotations.json").read_text()), json.loads((out / "annotations.json").read_text())
        assert ja["annotations"] == jb["annotations"] and ja["categories"] == jb["categories"]


class _Kill(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("method, extra", [("fda", {"pair": "random"}), ("color-stats", {"pair": "nearest", "pair_k": 2}), ("pca", {})])
def test_kill_and_rerun_is_identical(tmp_path, method, extra, make):
    a, b = make.classification(tmp_path / "A", n=9, c=3), make.target(tmp_path / "B", n=6)
    full = tmp_path / "full"
    run_transfer(_cfg(a, b, full, method=method, batch_size=2, seed=5, **extra))

    resumed = tmp_path / "resumed"

    def die(k):
        if k == 1:
            raise _Kill()

    with pytest.raises(_Kill):
        run_transfer(_cfg(a, b, resumed, method=method, batch_size=2, seed=5, **extra), after_batch=die)
    assert not resumed.exists() and (tmp_path / "resumed.partial").is_dir()
    res = run_transfer(_cfg(a, b, resumed, method=method, batch_size=2, seed=5, **extra))
    assert res["skipped_done"] == 4 and res["written"] == 5
    assert _files(full) == _files(resumed)


def test_seed_changes_random_pairs(datasets):
    a, b, tmp = datasets["A"], datasets["B"], datasets["tmp"]
    run_transfer(_cfg(a, b, tmp / "s0", seed=0))
    run_transfer(_cfg(a, b, tmp / "s1", seed=1))
    assert [r["target"] for r in _pairs(tmp / "s0")] != [r["target"] for r in _pairs(tmp / "s1")]


def test_shards_merge_to_the_single_run(tmp_path, make):
    a, b = make.classification(tmp_path / "A", n=7), make.target(tmp_path / "B")
    single = tmp_path / "single"
    run_transfer(_cfg(a, b, single, method="histogram", batch_size=2))
    sharded = tmp_path / "sharded"
    for r in range(2):
        res = run_transfer(_cfg(a, b, sharded, method="histogram", batch_size=2, rank=r, world_size=2))
        assert "finalize" in res["note"]
    assert not sharded.exists()
    run_transfer(_cfg(a, b, sharded, method="histogram", finalize=True))
    fa, fb = _files(single), _files(sharded)
    fa.pop("shiftkit.json"), fb.pop("shiftkit.json")
    assert fa == fb


def test_out_inside_source_is_refused(datasets):
    with pytest.raises(ShiftkitError, match="inside the source"):
        run_transfer(_cfg(datasets["A"], datasets["B"], datasets["A"] / "x"))


def test_config_validation(datasets):
    for kw, msg in [({"beta": 2.0}, "beta"), ({"method": "nope"}, "unknown method"), ({"pair": "x"}, "pairing"), ({"batch_size": 0}, "batch-size")]:
        with pytest.raises(ShiftkitError, match=msg):
            _cfg(datasets["A"], datasets["B"], datasets["tmp"] / "o", **kw)


def test_cli_json_and_gap(datasets, capsys):
    a, b, tmp = datasets["A"], datasets["B"], datasets["tmp"]
    rc = main(["transfer", "--source", str(a), "--target", str(b), "--out", str(tmp / "o"), "--method", "pca",
               "--json", "--device", "cpu", "--gap-max", "20"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["written"] == 7 and res["gap"]["before"]["properties"] >= 0.5
    assert set(res["gap"]["after"]) == set(res["gap"]["before"])
    assert main(["transfer", "--source", str(tmp / "missing"), "--target", str(b), "--out", str(tmp / "o2")]) == 2
    # a finished output is not silently rewritten
    assert main(["transfer", "--source", str(a), "--target", str(b), "--out", str(tmp / "o"), "--no-gap"]) == 2
    assert "exists" in capsys.readouterr().err


def test_target_cache_is_bounded_and_transparent(datasets):
    from shiftkit.transfer.pipeline import _Items

    tds = open_dataset(datasets["B"])
    one = tds[0].image.nbytes
    items = _Items(open_dataset(datasets["A"]), tds, lambda i: i % len(tds), cache_bytes=2 * one)
    for i in range(7):
        got = items[i]
        assert np.array_equal(got["target"], tds[i % len(tds)].image)
        assert items._cached <= 2 * one and len(items._cache) <= 2


KILLED_RUN = """
import os, sys
from shiftkit.transfer.pipeline import TransferConfig, run_transfer

def die(k):
    if k == 1:
        os._exit(9)  # like SIGKILL: no finally blocks, no writer close, nothing flushed at exit

cfg = TransferConfig(source=sys.argv[1], target=sys.argv[2], out=sys.argv[3], method="histogram", batch_size=3, seed=2,
                     pair="nearest", gap=False, progress=False, device="cpu", rank=0, world_size=1)
run_transfer(cfg, after_batch=die)
"""


def test_hard_kill_and_rerun_is_identical(tmp_path, make):
    import subprocess
    import sys

    a, b = make.classification(tmp_path / "A", n=8, c=3), make.target(tmp_path / "B", n=4)
    kw = dict(method="histogram", batch_size=3, seed=2, pair="nearest")
    run_transfer(_cfg(a, b, tmp_path / "full", **kw))
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(a), str(b), str(tmp_path / "killed")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    assert not (tmp_path / "killed").exists() and (tmp_path / "killed.partial").is_dir()
    res = run_transfer(_cfg(a, b, tmp_path / "killed", **kw))
    assert res["skipped_done"] == 6 and res["written"] == 2
    assert _files(tmp_path / "full") == _files(tmp_path / "killed")


@pytest.mark.parametrize("threads", ["0", "3"])
def test_encoding_threads_give_the_serial_output(tmp_path, make, monkeypatch, threads):
    a, b = make.classification(tmp_path / "A", n=9, c=3), make.target(tmp_path / "B", n=4)
    monkeypatch.setenv("SHIFTKIT_ENCODE_THREADS", "0")
    run_transfer(_cfg(a, b, tmp_path / "serial", method="fda", batch_size=2, seed=1, mix=True))
    monkeypatch.setenv("SHIFTKIT_ENCODE_THREADS", threads)
    res = run_transfer(_cfg(a, b, tmp_path / "threaded", method="fda", batch_size=2, seed=1, mix=True))
    assert res["written"] == 9
    assert _files(tmp_path / "serial") == _files(tmp_path / "threaded")


def test_cli_corrupt_source_image_stops_or_is_skipped_by_name(tmp_path, make, capsys):
    a, b = make.classification(tmp_path / "A", n=6, c=3), make.target(tmp_path / "B", n=3)
    bad = sorted(a.rglob("*.png"))[2]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    args = ["transfer", "--source", str(a), "--target", str(b), "--method", "histogram", "--no-gap", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "stop")]) == 2  # default --on-bad fail: the file is named
    assert bad.name in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "skip"), "--on-bad", "skip", "--json"]) == 1  # finished, with problems
    res = json.loads(capsys.readouterr().out)
    assert res["written"] == 5 and res["errors"] == 1
    assert not (tmp_path / "skip" / bad.relative_to(a)).exists()
