import json
import os

import numpy as np
import pytest

from shiftkit.data import Boxes, DatasetWriter, Sample, open_dataset
from shiftkit.data.formats.writer import JOURNAL, _coco_bbox
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.io import sha256_file

KINDS = ["imagefolder", "csv", "folder", "segmentation", "coco", "yolo"]


def tree(root):
    """{relative path: sha256} of every file below root (hidden ones included)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = sha256_file(p)
    return out


def write_all(ds, out, **kw):
    with DatasetWriter(out, like=ds, **kw) as w:
        for s in ds.iter_samples():
            if not w.is_done(s.path):
                w.write(s)
    return out


def same_targets(a, b, kind):
    if kind == "yolo":
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)  # 6 decimals of normalised floats
        assert np.array_equal(a.labels, b.labels)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact(tmp_path, build, kind):
    ds = open_dataset(build[kind](tmp_path / "in"))
    out = write_all(ds, tmp_path / "out", provenance={"command": "test"})
    ds2 = open_dataset(out)
    assert (ds2.format, ds2.task, ds2.classes, ds2.class_ids, ds2.ignore_index) == (ds.format, ds.task, ds.classes, ds.class_ids, ds.ignore_index)
    assert ds2.paths() == ds.paths()
    for a, b in zip(ds.iter_samples(), ds2.iter_samples(), strict=True):
        same_targets(a.target, b.target, kind)
        assert a.image.shape == b.image.shape
        if a.path.endswith(".png"):
            assert np.array_equal(a.image, b.image)  # lossless stays lossless
            for k in ("alpha", "bit_depth", "palette"):
                assert np.array_equal(np.asarray(a.meta.get(k)), np.asarray(b.meta.get(k)))
        else:
            assert b.meta["format"] == "JPEG"  # JPEG stays JPEG
    # a second generation is byte-identical to the first for lossless files (the writer is deterministic)
    write_all(ds2, tmp_path / "out2", provenance={"command": "test"})
    t1, t2 = tree(tmp_path / "out"), tree(tmp_path / "out2")
    assert t1.keys() == t2.keys()
    assert {k: v for k, v in t1.items() if k.endswith((".png", ".txt", ".csv"))} == {
        k: v for k, v in t2.items() if k.endswith((".png", ".txt", ".csv"))}
    man = json.loads((out / "shiftkit.json").read_text())
    assert man["provenance"] == {"command": "test"} and man["samples"] == ds.paths()
    assert man["files"] == {k: v for k, v in tree(out).items() if k != "shiftkit.json"}
    assert not (tmp_path / "out.partial").exists()


def test_coco_keeps_category_ids_and_unknown_fields(tmp_path, build):
    ds = open_dataset(build["coco"](tmp_path / "in"))
    out = write_all(ds, tmp_path / "out")
    src = json.loads((tmp_path / "in" / "annotations.json").read_text())
    got = json.loads((out / "annotations.json").read_text())
    assert got["categories"] == sorted(src["categories"], key=lambda c: c["id"])
    assert got["info"] == src["info"] and got["licenses"] == src["licenses"]
    assert [i["id"] for i in got["images"]] == [5, 9] and got["images"][0]["license"] == 1
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in got["annotations"]] == [
        (a["image_id"], a["category_id"], a["bbox"]) for a in src["annotations"]]


def test_coco_bbox_reads_back_exactly():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x1, y1 = rng.uniform(0, 1000, 2)
        xyxy = np.array([x1, y1, x1 + rng.uniform(0.01, 500), y1 + rng.uniform(0.01, 500)], np.float32)
        x, y, w, h = _coco_bbox(xyxy)
        back = np.array([x, y, x + w, y + h], dtype=np.float64).astype(np.float32)
        assert np.array_equal(back, xyxy)


def test_yolo_precision_within_1e3_px(tmp_path):
    rng = np.random.default_rng(1)
    W, H = 1000, 700
    xy = rng.uniform(0, 400, (50, 2))
    wh = rng.uniform(1, 300, (50, 2))
    boxes = Boxes(np.concatenate([xy, xy + wh], 1), rng.integers(0, 2, 50))
    with DatasetWriter(tmp_path / "y", format="yolo", classes=["a", "b"]) as w:
        w.write(Sample(np.zeros((H, W, 3), np.uint8), boxes, "im.png"))
    got = open_dataset(tmp_path / "y")[0].target
    assert np.abs(got.xyxy - boxes.xyxy).max() <= 1e-3 and np.array_equal(got.labels, boxes.labels)


@pytest.mark.parametrize("kind", ["imagefolder", "segmentation", "coco", "yolo", "csv"])
@pytest.mark.parametrize("how", ["raise", "drop"])
def test_killed_write_resumes_to_identical_output(tmp_path, build, kind, how):
    ds = open_dataset(build[kind](tmp_path / "in"))
    prov = {"command": "test", "seed": 0}
    ref = write_all(ds, tmp_path / "ref", provenance=prov)
    out = tmp_path / "out"
    half = len(ds) // 2
    if how == "raise":
        with pytest.raises(KeyboardInterrupt):
            with DatasetWriter(out, like=ds, provenance=prov) as w:
                for i, s in enumerate(ds.iter_samples()):
                    if i == half:
                        raise KeyboardInterrupt
                    w.write(s)
    else:
        w = DatasetWriter(out, like=ds, provenance=prov)
        for i, s in enumerate(ds.iter_samples()):
            if i < half:
                w.write(s)
        del w  # killed: never closed
    partial = tmp_path / "out.partial"
    assert partial.is_dir() and not out.exists()
    (partial / ".stale.png.123.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves
    with open(partial / JOURNAL, "a") as fh:
        fh.write('{"kind": "sample", "path": "tor')  # a journal line torn by the kill
    skipped = 0
    with DatasetWriter(out, like=ds, provenance=prov) as w:
        for s in ds.iter_samples():
            if w.is_done(s.path):
                skipped += 1
                continue
            w.write(s)
        journal = [json.loads(line) for line in (partial / JOURNAL).read_text().splitlines()[-(len(ds) - half):]]
        assert [e["path"] for e in journal] == [w.out_path(p) for p in ds.paths()[half:]]  # not glued to the torn line
    assert skipped == half
    assert tree(out) == tree(ref)  # same files, same hashes, same shiftkit.json


def test_resume_rewrites_files_that_do_not_verify(tmp_path, build):
    ds = open_dataset(build["imagefolder"](tmp_path / "in"))
    ref = write_all(ds, tmp_path / "ref")
    w = DatasetWriter(tmp_path / "out", like=ds)
    for s in ds.iter_samples():
        w.write(s)
    w.abort()
    (tmp_path / "out.partial" / "cat" / "a.png").write_bytes(b"corrupted")
    os.remove(tmp_path / "out.partial" / "dog" / "c.jpg")
    w = DatasetWriter(tmp_path / "out", like=ds)
    redone = []
    for s in ds.iter_samples():
        if not w.is_done(s.path):
            redone.append(s.path)
            w.write(s)
    w.close()
    assert redone == ["cat/a.png", "dog/c.jpg"]
    assert tree(tmp_path / "out") == tree(ref)


def test_changed_provenance_starts_over(tmp_path, build):
    ds = open_dataset(build["folder"](tmp_path / "in"))
    w = DatasetWriter(tmp_path / "out", like=ds, provenance={"seed": 0})
    w.write(ds[0])
    w.abort()
    w = DatasetWriter(tmp_path / "out", like=ds, provenance={"seed": 1})
    assert not w.is_done(ds[0].path)
    w.close()
    assert json.loads((tmp_path / "out" / "shiftkit.json").read_text())["samples"] == []


def test_exists_overwrite_and_overlap(tmp_path, build):
    ds = open_dataset(build["folder"](tmp_path / "in"))
    out = write_all(ds, tmp_path / "out")
    with pytest.raises(DatasetError, match="exists") as ei:
        DatasetWriter(out, like=ds)
    assert "--overwrite" in str(ei.value)
    with DatasetWriter(out, like=ds, overwrite=True) as w:
        w.write(ds[0])
    assert json.loads((out / "shiftkit.json").read_text())["samples"] == [ds.paths()[0]]
    assert not any(p.name.startswith(".out.old") for p in tmp_path.iterdir())
    for bad in (tmp_path / "in", tmp_path / "in" / "sub", tmp_path):
        with pytest.raises(DatasetError, match="overlaps"):
            DatasetWriter(bad, like=ds, overwrite=True)


def test_write_other_path_and_argument_checks(tmp_path, build):
    ds = open_dataset(build["imagefolder"](tmp_path / "in"))
    with DatasetWriter(tmp_path / "out", like=ds) as w:
        s = ds[0]
        assert w.write(s, path="cat/a__fda.png") == "cat/a__fda.png"
        assert w.is_done("cat/a__fda.png") and not w.is_done("cat/a.png")
        with pytest.raises(ShiftkitError, match="class id"):
            w.write(Sample(s.image, 5, "cat/x.png"))
        with pytest.raises(ShiftkitError, match="image suffix"):
            w.write(s, path="cat/x.txt")
        with pytest.raises(ShiftkitError, match="leaves the dataset"):
            w.write(s, path="../x.png")
    ds2 = open_dataset(tmp_path / "out")
    assert ds2.paths() == ["cat/a__fda.png"] and ds2.classes == ["cat", "dog"]  # empty class kept
    with pytest.raises(ShiftkitError, match="needs class names"):
        DatasetWriter(tmp_path / "o2", format="csv")
    with pytest.raises(ShiftkitError, match="unknown dataset format"):
        DatasetWriter(tmp_path / "o3", format="voc", classes=["a"])


def test_segmentation_sparse_ids_and_checks(tmp_path):
    img = np.zeros((4, 5, 3), np.uint8)
    mask = np.array([[0, 7, 7, 255, 0]] * 4, np.uint8)
    with DatasetWriter(tmp_path / "s", format="segmentation", classes=["bg", "car"], class_ids=[0, 7]) as w:
        w.write(Sample(img, mask, "a.png"))
        with pytest.raises(ShiftkitError, match="HxW mask"):
            w.write(Sample(img, mask[:3], "b.png"))
    ds = open_dataset(tmp_path / "s")
    assert ds.paths() == ["images/a.png"] and ds.class_ids == [0, 7] and ds.classes == ["bg", "car"]
    assert np.array_equal(ds[0].target, mask)


def test_format_conversion_yolo_to_coco(tmp_path, build):
    ds = open_dataset(build["yolo"](tmp_path / "in"))
    out = write_all(ds, tmp_path / "out", format="coco")
    ds2 = open_dataset(out)
    assert ds2.format == "coco" and ds2.classes == ds.classes and ds2.paths() == ds.paths()
    for a, b in zip(ds.iter_samples(), ds2.iter_samples(), strict=True):
        assert a.target == b.target


def test_unlabeled_cannot_be_written_as_labeled(tmp_path, build):
    ds = open_dataset(build["imagefolder"](tmp_path / "in"), task="unlabeled")
    with pytest.raises(DatasetError, match="unlabeled"):
        DatasetWriter(tmp_path / "out", like=ds, format="imagefolder")
    out = write_all(ds, tmp_path / "out")
    assert open_dataset(out, task="unlabeled").paths() == ds.paths()


def test_yolo_data_yaml_round_trip_keeps_other_keys(tmp_path, build):
    ds = open_dataset(build["yolo"](tmp_path / "in", yaml=True))
    out = write_all(ds, tmp_path / "out")
    text = (out / "data.yaml").read_text()
    assert text.startswith("path: .\ntrain: images\n") and "bike" in text and not (out / "classes.txt").exists()
    ds2 = open_dataset(out)
    assert ds2.classes == ["person", "bike"] and ds2.info["classes_file"] == "data.yaml"
    write_all(ds2, tmp_path / "out2")
    assert (tmp_path / "out2" / "data.yaml").read_text() == text


@pytest.mark.parametrize("classes_json", [
    ["bg", "road", "car"],
    {"classes": [{"id": 0, "name": "bg"}, {"id": 4, "name": "car"}], "ignore_index": 250},
])
def test_segmentation_classes_json_round_trip(tmp_path, build, classes_json):
    root = build["segmentation"](tmp_path / "in")
    (root / "classes.txt").unlink()
    (root / "classes.json").write_text(json.dumps(classes_json))
    ds = open_dataset(root)
    out = write_all(ds, tmp_path / "out")
    assert json.loads((out / "classes.json").read_text()) == classes_json
    ds2 = open_dataset(out)
    assert (ds2.classes, ds2.class_ids, ds2.ignore_index) == (ds.classes, ds.class_ids, ds.ignore_index)
    for a, b in zip(ds.iter_samples(), ds2.iter_samples(), strict=True):
        assert np.array_equal(a.target, b.target)


def test_close_is_idempotent_and_abort_is_final(tmp_path, build):
    ds = open_dataset(build["folder"](tmp_path / "in"))
    w = DatasetWriter(tmp_path / "out", like=ds)
    w.write(ds[0])
    assert w.close() == w.close() == (tmp_path / "out").absolute()
    w2 = DatasetWriter(tmp_path / "out", like=ds, overwrite=True)
    w2.abort()
    with pytest.raises(ShiftkitError, match="aborted"):
        w2.close()
    with pytest.raises(ShiftkitError, match="closed"):
        w2.write(ds[0])
