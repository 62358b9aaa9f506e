"""Benchmark builders: split maths, raw loaders, plans (counts without writing), prepare/resume, CLI."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from shiftkit.data.builders import plan as plan_by_name
from shiftkit.data.builders.core import BenchmarkPlan, Item, SplitPlan, prepare
from shiftkit.data.builders.digits import plan_mnist2digits, plan_svhn2mnist
from shiftkit.data.builders.sources import (
    DigitArrays,
    RestrictedUnpickler,
    load_elpv,
    load_mnist,
    load_uci_digits,
    safe_load_pickle,
    upsample_digits,
)
from shiftkit.data.builders.splits import split_sizes, stratified_split
from shiftkit.data.sample import Sample
from shiftkit.errors import DatasetError, ResourceError

elpv = pytest.importorskip("elpv_dataset")


# ---------------------------------------------------------------- splits


def test_split_sizes_match_sklearn_rounding():
    assert split_sizes(2223, 0.5) == (1111, 1112)
    assert split_sizes(1550, 0.7) == (1085, 465)
    assert split_sizes(1797, 0.7) == (1257, 540)
    assert split_sizes(10, 0.7) == (7, 3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_sizes_refuses_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        split_sizes(10, fraction)


def test_stratified_split_hand_computed():
    # 6 of class 0, 3 of class 1 at 2/3: first part 6 -> 4 + 2, second 3 -> 2 + 1.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    a, b = stratified_split(labels, 2 / 3, seed=0)
    assert len(a) == 6 and len(b) == 3
    assert np.bincount(labels[a]).tolist() == [4, 2]
    assert np.bincount(labels[b]).tolist() == [2, 1]
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(9))


def test_stratified_split_deterministic_and_seeded():
    labels = np.random.default_rng(1).integers(0, 3, 200)
    a1, b1 = stratified_split(labels, 0.7, seed=5)
    a2, b2 = stratified_split(labels, 0.7, seed=5)
    a3, _ = stratified_split(labels, 0.7, seed=6)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert not np.array_equal(a1, a3)
    assert len(np.intersect1d(a1, b1)) == 0
    for c in range(3):  # each class within one item of its exact share
        n_c = (labels == c).sum()
        assert abs((labels[a1] == c).sum() - n_c * len(a1) / len(labels)) < 1


def test_stratified_split_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        stratified_split(np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        stratified_split([1], 0.5)


# ---------------------------------------------------------------- raw loaders


def test_elpv_labels_table():
    t = load_elpv()
    assert len(t) == 2624
    assert (t.type == "mono").sum() == 1074 and (t.type == "poly").sum() == 1550
    assert set(np.unique(t.probability).round(3)) == {0.0, 0.333, 0.667, 1.0}
    img = t.read(0)
    assert img.shape == (300, 300, 1) and img.dtype == np.uint8


def test_elpv_bad_labels_file(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("images/cell0001.png 1.0 amorphous\n")
    with pytest.raises(ResourceError, match="line 1"):
        load_elpv(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_os_system():
    payload = pickle.dumps(_Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        RestrictedUnpickler(io.BytesIO(payload)).load()
    with pytest.raises(ResourceError, match="unsafe or corrupt pickle"):
        safe_load_pickle(io.BytesIO(payload))


def test_restricted_unpickler_refuses_builtins_eval():
    payload = b"c__builtin__\neval\n(S'1+1'\ntR."  # protocol 0: eval("1+1")
    with pytest.raises(ResourceError, match="builtins.eval|__builtin__.eval"):
        safe_load_pickle(io.BytesIO(payload))


def _fake_mnist(path: Path, n=(30, 10, 10)) -> list:
    rng = np.random.default_rng(0)
    parts = []
    for k in n:
        x = (rng.integers(0, 256, (k, 784)) / 256.0).astype(np.float32)
        y = np.arange(k, dtype=np.int64) % 10
        parts.append((x, y))
    with gzip.open(path, "wb") as fh:
        pickle.dump(tuple(parts), fh, protocol=2)
    return parts


def test_load_mnist_exact_uint8(tmp_path):
    f = tmp_path / "mnist.pkl.gz"
    parts = _fake_mnist(f)
    m = load_mnist(f)
    assert [len(m[k]) for k in ("train", "validation", "test")] == [30, 10, 10]
    assert m["train"].images.shape == (30, 28, 28) and m["train"].images.dtype == np.uint8
    expected = np.rint(parts[0][0] * 256).astype(np.uint8).reshape(-1, 28, 28)
    assert np.array_equal(m["train"].images, expected)
    assert np.array_equal(m["test"].labels, parts[2][1])


def test_load_mnist_bad_layout(tmp_path):
    f = tmp_path / "bad.pkl.gz"
    with gzip.open(f, "wb") as fh:
        pickle.dump((np.zeros((2, 5), np.float32), np.zeros(2)), fh, protocol=2)
    with pytest.raises(ResourceError, match="MNIST pickle layout"):
        load_mnist(f)


def test_uci_digits_scaled():
    d = load_uci_digits()
    assert len(d) == 1797 and d.images.shape == (1797, 8, 8) and d.images.dtype == np.uint8
    assert d.images.max() == 255 and d.images.min() == 0


def test_upsample_digits_box_and_padding():
    img = np.full((1, 8, 8), 200, np.uint8)
    up = upsample_digits(img)
    assert up.shape == (1, 28, 28)
    assert (up[0, 4:24, 4:24] == 200).all()  # a constant image stays constant inside the 20x20 box
    assert up[0, :4].max() == 0 and up[0, 24:].max() == 0 and up[0, :, :4].max() == 0 and up[0, :, 24:].max() == 0
    with pytest.raises(ValueError, match="box"):
        upsample_digits(img, box=30, size=28)
    with pytest.raises(ValueError, match="N, H, W"):
        upsample_digits(img[0])


# ---------------------------------------------------------------- plans (no image written)


def _counts(p: BenchmarkPlan) -> dict:
    return {s.name: (len(s.items), s.class_counts()) for s in p.splits}


def test_b1_plan_counts():
    c = _counts(plan_by_name("elpv-defect", seed=0))
    assert c["train"] == (1111, {"functional": 754, "defective": 357})
    assert c["val"] == (1112, {"functional": 754, "defective": 358})


def test_b2_plan_counts_and_names():
    p = plan_by_name("elpv-mono2poly", seed=0)
    c = _counts(p)
    assert c["source"][0] == 1074 and c["target"][0] == 1085 and c["target-test"][0] == 465
    assert sum(c["target"][1].values()) + sum(c["target-test"][1].values()) == 1550
    target_names = {it.path for it in p.split("target").items}
    test_names = {Path(it.path).name for it in p.split("target-test").items}
    assert all(n.startswith("cell") and n.endswith(".png") and "/" not in n for n in target_names)
    assert not target_names & test_names
    assert all(it.path.split("/")[0] in ("functional", "defective") for it in p.split("source").items)


def test_b2_plan_deterministic_by_seed():
    a = [it.path for it in plan_by_name("elpv-mono2poly", seed=0).split("target").items]
    b = [it.path for it in plan_by_name("elpv-mono2poly", seed=0).split("target").items]
    c = [it.path for it in plan_by_name("elpv-mono2poly", seed=1).split("target").items]
    assert a == b and a != c


def test_b3_plan_with_small_arrays():
    rng = np.random.default_rng(0)
    mk = lambda n: DigitArrays(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n) % 10)
    p = plan_mnist2digits(0, mnist={"train": mk(40), "validation": mk(10), "test": mk(20)})
    c = _counts(p)
    assert c["source"][0] == 40 and c["source-test"][0] == 20
    assert c["target"][0] == 1257 and c["target-test"][0] == 540
    s = p.split("target").items[0].make()
    assert s.image.shape == (28, 28, 1)
    assert p.split("source").items[3].path == "3/mnist-train-00003.png"


def test_b4_plan_has_no_source_and_an_unlabeled_target():
    rng = np.random.default_rng(0)
    mk = lambda n: DigitArrays(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n) % 10)
    p = plan_svhn2mnist(0, mnist={"train": mk(30), "validation": mk(10), "test": mk(20)})
    assert [s.name for s in p.splits] == ["target", "validation", "target-test"]
    c = _counts(p)
    assert c["target"][0] == 30 and c["validation"][0] == 10 and c["target-test"][0] == 20
    assert p.split("target").items[3].path == "mnist-train-00003.png"  # no class folder: unlabeled
    assert p.split("target-test").items[3].path == "3/mnist-test-00003.png"
    assert len(plan_svhn2mnist(0, limit=5, mnist={"train": mk(30), "validation": mk(10), "test": mk(20)}).split("target").items) == 5


# ---------------------------------------------------------------- prepare: files, READMEs, resume


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_prepare_b2_subset_writes_readmes(tmp_path):
    out = tmp_path / "m2p"
    s = prepare(plan_by_name("elpv-mono2poly", 0, limit=4), out, progress=False, log=lambda m: None)
    assert s["status"] == "complete"
    assert {k: v["count"] for k, v in s["splits"].items()} == {"source": 4, "target": 4, "target-test": 4}
    for split in ("source", "target", "target-test"):
        readme = (out / split / "README").read_text()
        assert "CC BY-NC-SA 4.0" in readme and "elpv-dataset" in readme and "seed 0" in readme
        assert "Count: 4 images" in readme
    assert "70/30" in (out / "target" / "README").read_text()
    assert all("/" not in f for f in _files(out / "target"))  # unlabeled: no class folders
    assert all(f.split("/")[0] in ("functional", "defective") for f in _files(out / "target-test"))
    assert json.loads((out / "benchmark.json").read_text())["status"] == "complete"


def test_prepare_rerun_exists_and_mismatch(tmp_path):
    out = tmp_path / "b1"
    p = plan_by_name("elpv-defect", 0, limit=2)
    prepare(p, out, progress=False, log=lambda m: None)
    before = {f: (out / f).stat().st_mtime_ns for f in _files(out)}
    assert prepare(p, out, progress=False, log=lambda m: None)["status"] == "exists"
    assert {f: (out / f).stat().st_mtime_ns for f in _files(out)} == before
    with pytest.raises(DatasetError, match="--overwrite"):
        prepare(plan_by_name("elpv-defect", 1, limit=2), out, progress=False, log=lambda m: None)
    s = prepare(plan_by_name("elpv-defect", 1, limit=2), out, overwrite=True, progress=False, log=lambda m: None)
    assert s["seed"] == 1 and s["status"] == "complete"


def test_prepare_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(DatasetError, match="does not own"):
        prepare(plan_by_name("elpv-defect", 0, limit=2), tmp_path, progress=False, log=lambda m: None)


def _toy_plan(calls: list, fail_at: int | None = None) -> BenchmarkPlan:
    def make(i):
        def f():
            if fail_at is not None and i == fail_at:
                raise KeyboardInterrupt  # a kill in the middle of the split
            calls.append(i)
            img = np.full((4, 4, 1), i * 10, np.uint8)
            return Sample(img, i % 2, f"{'ab'[i % 2]}/x{i}.png")
        return f

    items = [Item(f"{'ab'[i % 2]}/x{i}.png", i % 2, make(i)) for i in range(6)]
    split = SplitPlan("train", "imagefolder", ["a", "b"], items, "toy", "toy licence", "toy rule")
    return BenchmarkPlan("toy", 0, "toy", [split])


def test_prepare_resumes_after_kill(tmp_path):
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        prepare(_toy_plan(calls, fail_at=4), tmp_path, progress=False, log=lambda m: None)
    assert calls == [0, 1, 2, 3]
    assert not (tmp_path / "train").exists()  # unfinished split is not under its final name
    calls.clear()
    s = prepare(_toy_plan(calls), tmp_path, progress=False, log=lambda m: None)
    assert calls == [4, 5]  # finished files are not redone
    assert s["splits"]["train"]["classes"] == {"a": 3, "b": 3}
    assert _files(tmp_path / "train") == sorted(f"{'ab'[i % 2]}/x{i}.png" for i in range(6))


def test_prepare_deterministic_content(tmp_path):
    from shiftkit.io import sha256_file

    hashes = []
    for name in ("a", "b"):
        out = tmp_path / name
        prepare(plan_by_name("elpv-mono2poly", 0, limit=3), out, progress=False, log=lambda m: None)
        hashes.append({f: sha256_file(out / f) for f in _files(out)})
    assert hashes[0] == hashes[1] and len(hashes[0]) == 9


# ---------------------------------------------------------------- CLI


def test_cli_list_and_prepare(tmp_path, capsys):
    from shiftkit.cli import main

    assert main(["data", "list", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert {"elpv-defect", "elpv-mono2poly", "mnist2digits", "svhn2mnist-sourcefree"} <= set(names)
    out = tmp_path / "b1"
    assert main(["data", "prepare", "elpv-defect", "--out", str(out), "--limit", "2", "--json", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["splits"]["train"]["count"] == 2
    assert main(["data", "prepare", "elpv-defect", "--out", str(out), "--limit", "2"]) == 0
    text = capsys.readouterr()
    assert "exists" in text.out and "train" in text.out
    assert main(["data", "prepare", "nope", "--out", str(out)]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


# ---------------------------------------------------------------- B5 digit-scenes


def _fake_digits(n: int, seed: int = 0) -> DigitArrays:
    rng = np.random.default_rng(seed)
    return DigitArrays(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), np.arange(n) % 10)


def test_scene_render_hand_computed():
    from shiftkit.data.builders import scenes

    img = np.zeros((28, 28), np.uint8)
    img[4:24, 10:18] = 255  # a full-intensity bar
    digits = DigitArrays(img[None], np.array([7]))
    spec = scenes.SceneSpec((scenes.Placement(0, 7, 28, 10, 20, (1.0, 0.8, 0.9)),), 0.2, 0, (0, 0, 64))
    src, mask = scenes.render_source(spec, digits)
    assert src.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert src[20, 34].tolist() == [255, 204, 230]  # inside the bar: the digit's colour
    assert src[0, 0].tolist() == [51, 51, 51]  # background: g = 0.2
    assert mask[20, 34] == 8 and mask[0, 0] == 0  # class = digit + 1
    assert set(np.unique(mask).tolist()) == {0, 8}
    photo = np.full((64, 64, 3), 200, np.uint8)
    tgt, tmask = scenes.render_target(spec, digits, photo)
    assert tgt[20, 34].tolist() == [55, 55, 55]  # |200/255 - 1| * 255
    assert tgt[0, 0].tolist() == [200, 200, 200]
    assert np.array_equal(mask, tmask)


def test_scene_plan_deterministic_and_disjoint_photos():
    from shiftkit.data.builders import scenes

    mnist = {"train": _fake_digits(50), "validation": _fake_digits(20, 1), "test": _fake_digits(20, 2)}
    counts = {"source": 6, "target": 4, "target-test": 3}
    p1 = scenes.plan_digit_scenes(0, counts=counts, mnist=mnist)
    p2 = scenes.plan_digit_scenes(0, counts=counts, mnist=mnist)
    p3 = scenes.plan_digit_scenes(1, counts=counts, mnist=mnist)
    assert [len(s.items) for s in p1.splits] == [6, 4, 3]
    a, b, c = (p.split("target").items[2].make() for p in (p1, p2, p3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.target, b.target)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.target.max() <= 10
    n_digits = sum(p1.split("source").class_counts().values())
    assert 6 <= n_digits <= 18
    assert not {n for n, _, _ in scenes.PHOTOS_TRAIN} & {n for n, _, _ in scenes.PHOTOS_TEST}
    with pytest.raises(ValueError, match="at least 1"):
        scenes.plan_digit_scenes(0, counts={"source": 0}, mnist=mnist)


def test_scene_prepare_writes_segmentation(tmp_path):
    from shiftkit.data import open_dataset
    from shiftkit.data.builders import scenes

    mnist = {"train": _fake_digits(30), "validation": _fake_digits(10, 1), "test": _fake_digits(10, 2)}
    p = scenes.plan_digit_scenes(0, counts={"source": 3, "target": 2, "target-test": 2}, mnist=mnist)
    summary = prepare(p, tmp_path / "ds", progress=False, log=lambda m: None)
    pix = summary["splits"]["target-test"]["pixels"]
    assert set(pix) == set(scenes.CLASSES) and abs(sum(pix.values()) - 1) < 1e-9 and pix["background"] > 0.5
    ds = open_dataset(tmp_path / "ds" / "target-test")
    assert ds.format == "segmentation" and len(ds) == 2 and ds.classes == scenes.CLASSES
    s = ds[0]
    assert s.image.shape == (64, 64, 3) and s.target.shape == (64, 64)
    readme = (tmp_path / "ds" / "target-test" / "README").read_text()
    assert "chelsea" in readme and "astronaut" not in readme and "digit + 1" in readme
    assert "Pixel balance (masks): background" in readme
