import json
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from shiftkit.data import Boxes, Task, open_dataset
from shiftkit.data.formats.readers import read_classes_json, read_classes_txt, read_yaml_names
from shiftkit.errors import DatasetError, ImageError, UnsafePathError

KINDS = ["imagefolder", "csv", "folder", "segmentation", "coco", "yolo"]


@pytest.mark.parametrize("kind", KINDS)
def test_detect_format_and_task(tmp_path, build, kind):
    p = build[kind](tmp_path / kind)
    ds = open_dataset(p)
    assert ds.format == kind
    assert ds.task.value == {"imagefolder": "classification", "csv": "classification", "folder": "unlabeled",
                             "segmentation": "segmentation", "coco": "detection", "yolo": "detection"}[kind]
    assert len(ds) == len(ds.paths()) >= 2
    s = ds[0]
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.path == ds.paths()[0]


def test_imagefolder_classes_labels_and_image_conventions(tmp_path, build):
    ds = open_dataset(build["imagefolder"](tmp_path / "d"))
    assert ds.classes == ["cat", "dog"]
    assert ds.paths() == ["cat/a.png", "cat/f.jpg", "cat/sub/b.png", "dog/c.jpg", "dog/d.png", "dog/e.png"]
    assert ds.labels() == [0, 0, 0, 1, 1, 1]
    assert ds.class_counts() == {"cat": 3, "dog": 3}
    by = {s.path: s for s in ds.iter_samples()}
    assert by["cat/f.jpg"].image.shape == (8, 6, 3)  # EXIF orientation 6 applied: upright
    assert by["cat/sub/b.png"].image.shape == (6, 8, 1)
    assert by["dog/d.png"].meta["alpha"].shape == (6, 8)
    assert by["dog/e.png"].meta["bit_depth"] == 16
    assert ds.ignore_index is None


def test_csv_order_classes_and_folder_argument(tmp_path, build):
    csv_path = build["csv"](tmp_path / "c")
    a, b = open_dataset(csv_path), open_dataset(csv_path.parent)
    assert a.paths() == b.paths() == ["img/2.png", "img/1.png", "img/3.png"]
    assert a.classes == ["bad", "ok"] and a.labels() == [1, 0, 1]
    assert a.info["manifest"] == "data.csv"


def test_csv_unknown_class_with_classes_txt(tmp_path, build):
    p = build["csv"](tmp_path / "c")
    (p.parent / "classes.txt").write_text("ok\n")
    with pytest.raises(DatasetError, match="unknown class 'bad'") as ei:
        open_dataset(p)
    assert "data.csv:3" in str(ei.value)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd"])
def test_csv_refuses_paths_outside(tmp_path, build, bad):
    p = build["csv"](tmp_path / "c")
    (tmp_path / "outside.png").write_bytes((p.parent / "img" / "1.png").read_bytes())
    p.write_text(f"path,label\nimg/1.png,a\n{bad},b\n")
    with pytest.raises(UnsafePathError) as ei:
        open_dataset(p)
    assert "data.csv:3" in str(ei.value) and "relative" in str(ei.value)


def test_symlink_out_of_root_refused(tmp_path, build):
    root = build["imagefolder"](tmp_path / "d")
    (tmp_path / "secret.png").write_bytes((root / "cat" / "a.png").read_bytes())
    os.symlink(tmp_path / "secret.png", root / "cat" / "evil.png")
    with pytest.raises(UnsafePathError, match="evil.png"):
        open_dataset(root)


def test_coco_refuses_dotdot_file_name(tmp_path, build):
    root = build["coco"](tmp_path / "k")
    obj = json.loads((root / "annotations.json").read_text())
    obj["images"][1]["file_name"] = "../../x.png"
    (root / "annotations.json").write_text(json.dumps(obj))
    with pytest.raises(UnsafePathError, match="images\\[1\\]"):
        open_dataset(root)


def test_missing_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no images"):
        open_dataset(tmp_path / "txt")


def test_segmentation_masks_palette_and_missing_mask(tmp_path, build):
    root = build["segmentation"](tmp_path / "s")
    ds = open_dataset(root)
    assert ds.classes == ["background", "road", "car"] and ds.class_ids == [0, 1, 2] and ds.ignore_index == 255
    s = ds[0]
    assert s.target.shape == (6, 8) and s.target.dtype == np.uint8
    assert s.target[0, 0] == 255 and s.target[1, 2] == 1 and s.target[4, 0] == 2
    assert s.meta["palette"][:9] == [0, 0, 0, 200, 10, 10, 10, 200, 10]
    assert "palette" not in ds[1].meta
    os.remove(root / "masks" / "b.png")
    with pytest.raises(DatasetError, match="no mask") as ei:
        open_dataset(root)
    assert "b.jpg" in str(ei.value)


def test_segmentation_mask_wrong_size_raises_on_getitem(tmp_path, build):
    root = build["segmentation"](tmp_path / "s")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "masks" / "b.png")
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match="mask is 3x3"):
        ds[1]


def test_classes_json_forms(tmp_path):
    p = tmp_path / "classes.json"
    p.write_text(json.dumps({"classes": [{"id": 7, "name": "car"}, {"id": 0, "name": "bg"}], "ignore_index": 250}))
    assert read_classes_json(p) == (["bg", "car"], [0, 7], 250, "dict")
    p.write_text(json.dumps(["a", "b"]))
    assert read_classes_json(p) == (["a", "b"], [0, 1], 255, "list")
    t = tmp_path / "classes.txt"
    t.write_text("bg\n\ncar\n\n")
    assert read_classes_txt(t) == (["bg", "car"], [0, 2])


@pytest.mark.parametrize("text, want", [
    ("names: [a, 'b c', \"d\"]\n", ["a", "b c", "d"]),
    ("train: x\nnames:\n  - a\n  - b  # comment\nval: y\n", ["a", "b"]),
    ("names:\n  1: b\n  0: a\nnc: 2\n", ["a", "b"]),
    ("names: {0: a, 1: b}\n", ["a", "b"]),
    ("nc: 2\n", None),
])
def test_yaml_names(tmp_path, text, want):
    p = tmp_path / "data.yaml"
    p.write_text(text)
    assert read_yaml_names(p) == want


def test_coco_boxes_classes_and_category_mapping(tmp_path, build):
    ds = open_dataset(build["coco"](tmp_path / "k"))
    assert ds.classes == ["car", "truck"] and ds.info["category_ids"] == [3, 7]
    assert ds.paths() == ["images/p.png", "images/q.png"]
    b = ds[0].target
    assert isinstance(b, Boxes) and b.xyxy.dtype == np.float32
    want = np.array([[1, 2, 1 + 5.5, 2 + 4], [10.1, 3.3, 10.1 + 6.2, 3.3 + 7.7]], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(b.xyxy, want)
    assert b.labels.tolist() == [1, 0]
    assert ds.class_counts() == {"car": 2, "truck": 1}


def test_coco_json_file_and_names_relative_to_json(tmp_path, build):
    root = build["coco"](tmp_path / "k")
    obj = json.loads((root / "annotations.json").read_text())
    for rec in obj["images"]:
        rec["file_name"] = "images/" + rec["file_name"]
    (root / "annotations.json").unlink()
    (root / "train.json").write_text(json.dumps(obj))
    ds = open_dataset(root / "train.json")
    assert ds.paths() == ["images/p.png", "images/q.png"] and ds.info["file_prefix"] == ""


def test_yolo_boxes_and_yaml_names(tmp_path, build):
    ds = open_dataset(build["yolo"](tmp_path / "y", yaml=True))
    assert ds.classes == ["person", "bike"]
    b = ds[0].target  # images/train/u.png, 20x16: cx=10, cy=8, w=5, h=8
    np.testing.assert_allclose(b.xyxy[0], [7.5, 4.0, 12.5, 12.0], atol=1e-5)
    np.testing.assert_allclose(b.xyxy[1], [1.0, 2.4, 3.0, 4.0], atol=1e-5)
    assert b.labels.tolist() == [0, 1]


def test_yolo_bad_line_names_file_and_line(tmp_path, build):
    root = build["yolo"](tmp_path / "y")
    (root / "labels" / "v.txt").write_text("1 0.5 0.5 0.2 0.3\n0 0.5 nope 0.1 0.1\n")
    with pytest.raises(DatasetError, match="v.txt:2"):
        open_dataset(root)


def test_task_override(tmp_path, build):
    root = build["imagefolder"](tmp_path / "d")
    ds = open_dataset(root, task="unlabeled")
    assert ds.task is Task.UNLABELED and ds.format == "folder" and ds[0].target is None and len(ds) == 6
    seg = open_dataset(build["segmentation"](tmp_path / "s"), task=Task.UNLABELED)
    assert seg.paths() == ["images/a.png", "images/b.jpg"]
    with pytest.raises(DatasetError, match="cannot be read as detection"):
        open_dataset(root, task="detection")
    with pytest.raises(ValueError, match="unknown task 'nonsense': use one of classification, segmentation"):
        open_dataset(root, task="nonsense")


def test_corrupt_image_getitem_and_skip(tmp_path, build):
    root = build["imagefolder"](tmp_path / "d")
    (root / "cat" / "zz.png").write_bytes(b"this is not a png")
    ds = open_dataset(root)
    i = ds.paths().index("cat/zz.png")
    with pytest.raises(ImageError, match="zz.png"):
        ds[i]
    errors = []
    got = [s.path for s in ds.iter_samples(on_error="skip", errors=errors)]
    assert "cat/zz.png" not in got and len(got) == 6
    assert len(errors) == 1 and "zz.png" in str(errors[0])
    with pytest.raises(ImageError):
        list(ds.iter_samples())
    with pytest.raises(ValueError):
        next(ds.iter_samples(on_error="ignore"))


def test_max_pixels_refuses_bombs(tmp_path, build):
    ds = open_dataset(build["folder"](tmp_path / "f"), max_pixels=47)  # images are 8x6 = 48 px
    with pytest.raises(ImageError, match="decompression bomb"):
        ds[0]
    assert ds.with_max_pixels(48)[0].image.shape == (6, 8, 3)


def test_index_holds_no_pixels(tmp_path, build):
    """Memory flat: opening decodes nothing; the index is paths + small targets."""
    root = tmp_path / "big"
    img = np.zeros((200, 200, 3), np.uint8)
    (root / "a").mkdir(parents=True)
    for i in range(20):
        Image.fromarray(img + i).save(root / "a" / f"{i}.png")
    tracemalloc.start()
    ds = open_dataset(root)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ds) == 20 and peak < 20 * 200 * 200 * 3 // 4  # far below the decoded size (2.4 MB)


def test_subset_and_labels_errors(tmp_path, build):
    ds = open_dataset(build["imagefolder"](tmp_path / "d"))
    sub = ds.subset([5, 0])
    assert sub.paths() == ["dog/e.png", "cat/a.png"] and sub.labels() == [1, 0] and sub.classes == ds.classes
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(Exception, match="classification"):
        open_dataset(build["folder"](tmp_path / "f")).labels()


def test_yolo_classes_txt_inside_labels_is_not_a_label(tmp_path, build):
    root = build["yolo"](tmp_path / "y")
    (root / "classes.txt").rename(root / "labels" / "classes.txt")
    ds = open_dataset(root)
    assert ds.classes == ["person", "bike"] and ds.info["classes_file"] == "labels/classes.txt"
    from shiftkit.data.validate import validate
    assert validate(root, few_samples=0).ok


def test_coco_prefix_decided_by_first_existing_image(tmp_path, build):
    root = build["coco"](tmp_path / "k")
    obj = json.loads((root / "annotations.json").read_text())
    obj["images"].insert(0, {"id": 1, "file_name": "gone.png"})
    (root / "annotations.json").write_text(json.dumps(obj))
    with pytest.raises(DatasetError, match="gone.png"):
        open_dataset(root)
    from shiftkit.data.validate import validate
    rep = validate(root, few_samples=0)
    assert rep.counts() == {"missing-file": 1} and rep.stats["images"] == 2
