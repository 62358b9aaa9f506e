import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from shiftkit.cli import main
from shiftkit.data.validate import near_duplicates, phash64, validate
from shiftkit.errors import ShiftkitError


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def smooth(h, w, seed):
    """A smooth picture (so that perceptual hashes are stable) that differs per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


@pytest.fixture
def broken_seg(tmp_path):
    """images/ + masks/ holding a truncated PNG, a zero-byte file, a text file named .jpg,
    a mask of the wrong size and an exact duplicate."""
    root = tmp_path / "broken"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("bg\nfg\n")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 1
    for i, name in enumerate(["good", "other", "wrongsize"]):
        (root / "images" / f"{name}.png").write_bytes(png_bytes(smooth(32, 32, i)))
    data = png_bytes(np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "images" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "text.jpg").write_text("hello, I am not a JPEG\n")
    shutil.copy(root / "images" / "good.png", root / "images" / "dup.png")
    for name in ["good", "other", "trunc", "empty", "text", "dup"]:
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    Image.fromarray(mask[:16, :20]).save(root / "masks" / "wrongsize.png")
    return root


def test_validate_reports_all_five_each_naming_its_file(broken_seg, capsys):
    rc = main(["validate", str(broken_seg), "--few-samples", "0"])
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.strip().splitlines()
    want = {
        "corrupt-image": "images/trunc.png",
        "empty-file": "images/empty.png",
        "not-image": "images/text.jpg",
        "mask-size": "masks/wrongsize.png",
        "duplicate": "images/good.png",  # sorted order: dup.png comes first, good.png is its copy
    }
    for code, path in want.items():
        hits = [ln for ln in lines if ln.startswith(code + "  ")]
        assert len(hits) == 1, (code, out)
        assert str(broken_seg / path) in hits[0] and "(" in hits[0]
    assert "same bytes as images/dup.png" in [ln for ln in lines if ln.startswith("duplicate")][0]
    assert "problems" in lines[-1]


def test_validate_json(broken_seg, capsys):
    rc = main(["validate", str(broken_seg), "--json", "--few-samples", "0"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 1 and rep["ok"] is False and rep["format"] == "segmentation"
    assert rep["problem_counts"] == {"corrupt-image": 1, "duplicate": 1, "empty-file": 1, "mask-size": 1, "not-image": 1}
    assert rep["stats"]["images"] == 7 and rep["stats"]["readable"] == 4 and rep["stats"]["exact_duplicates"] == 1
    assert all(set(p) == {"code", "path", "message", "fix"} for p in rep["problems"])


def test_clean_imagefolder_exits_0(tmp_path, capsys):
    root = tmp_path / "clean"
    for c, seeds in (("a", range(0, 5)), ("b", range(5, 10))):
        (root / c).mkdir(parents=True)
        for s in seeds:
            Image.fromarray(smooth(24, 24, s)).save(root / c / f"{s}.png")
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [f"{root} (imagefolder, classification): 10 images, 2 classes; no problems found"]
    assert main(["validate", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["stats"]["class_counts"] == {"a": 5, "b": 5}


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.fromarray(smooth(8, 8, 0)).save(tmp_path / "d" / "a" / "x.png")
    assert main(["validate", str(tmp_path / "d"), "--few-samples", "-1"]) == 2
    with pytest.raises(ShiftkitError):
        validate(tmp_path / "d", imbalance_ratio=0.5)


def test_stray_files_near_duplicates_classes_and_unsafe(tmp_path):
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    base = smooth(40, 40, 1)
    Image.fromarray(base).save(root / "a" / "orig.png")
    brighter = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(root / "a" / "bright.jpg", quality=90)  # same picture, other bytes
    for s in range(2, 13):
        Image.fromarray(smooth(40, 40, s * 7)).save(root / "a" / f"{s}.png")
    Image.fromarray(smooth(40, 40, 99)).save(root / "b" / "only.png")
    (root / "b" / "notes.txt").write_text("stray")
    (tmp_path / "outside.png").write_bytes(png_bytes(smooth(8, 8, 5)))
    os.symlink(tmp_path / "outside.png", root / "b" / "link.png")
    rep = validate(root, few_samples=2, imbalance_ratio=5)
    by = {}
    for p in rep.problems:
        by.setdefault(p.code, []).append(p)
    assert [p.path for p in by["near-duplicate"]] == [str(root / "a" / "orig.png")]  # later index names the earlier
    assert "a/bright.jpg" in by["near-duplicate"][0].message
    assert by["stray-file"][0].path == str(root / "b" / "notes.txt")
    assert "link.png" in by["unsafe-path"][0].path + by["unsafe-path"][0].message
    assert by["few-samples"][0].path == str(root / "b") and "'b' has 1 images" in by["few-samples"][0].message
    assert "ratio 13.0 > 5" in by["class-imbalance"][0].message
    assert validate(root, few_samples=0, imbalance_ratio=20, near_dup_bits=None).counts() == {"stray-file": 1, "unsafe-path": 1}


def test_detection_boxes_and_bombs(tmp_path):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    Image.fromarray(smooth(20, 20, 0)).save(root / "images" / "ok.png")
    Image.fromarray(smooth(20, 20, 1)).save(root / "images" / "bad.png")
    (root / "labels" / "ok.txt").write_text("0 0.5 0.5 1.0 1.0\n1 0.25 0.25 0.5 0.5\n")
    (root / "labels" / "bad.txt").write_text("0 0.9 0.5 0.4 0.2\n1 0.5 0.5 0.0 0.3\n")
    rep = validate(root, few_samples=0)
    assert rep.counts() == {"box-degenerate": 1, "box-outside": 1}
    assert all(p.path == str(root / "images" / "bad.png") for p in rep.problems)
    assert rep.stats["class_counts"] == {"a": 2, "b": 2} and rep.stats["count_unit"] == "boxes"
    bomb = validate(root, few_samples=0, max_pixels=399)  # 20x20 = 400 px
    assert bomb.counts() == {"decompression-bomb": 2}


def test_mask_ids_outside_classes(tmp_path):
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("bg\nfg\n")
    Image.fromarray(smooth(8, 8, 0)).save(root / "images" / "a.png")
    m = np.zeros((8, 8), np.uint8)
    m[0, :3] = [1, 255, 4]
    Image.fromarray(m).save(root / "masks" / "a.png")
    rep = validate(root, few_samples=0, imbalance_ratio=100)
    assert rep.counts() == {"mask-ids": 1}
    assert "[4]" in rep.problems[0].message and rep.problems[0].path == str(root / "masks" / "a.png")
    assert rep.stats["class_counts"] == {"bg": 1, "fg": 1}


def test_phash_against_reference_dct():
    scipy_fft = pytest.importorskip("scipy.fft")
    img = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    f = scipy_fft.dctn(img.astype(np.float64), norm="ortho")[:8, :8]
    want = int("".join("1" if v > np.median(f) else "0" for v in f.reshape(-1)), 2)
    assert phash64(img[:, :, None]) == want
    # flat image: only the DC coefficient is above the median (0) -> the top bit alone
    assert phash64(np.full((20, 30, 3), 77, np.uint8)) == 1 << 63


def test_phash_same_picture_close_other_picture_far():
    skdata = pytest.importorskip("skimage.data")
    photo = skdata.astronaut()[::4, ::4]  # a real photo, 128x128
    a, other = photo[:96, :96].copy(), photo[32:, 32:].copy()
    buf = io.BytesIO()
    Image.fromarray(np.clip(a.astype(int) + 6, 0, 255).astype(np.uint8)).resize((128, 128)).save(buf, "JPEG", quality=75)
    copy = np.asarray(Image.open(buf))
    d_same = bin(phash64(a) ^ phash64(copy)).count("1")
    d_other = bin(phash64(a) ^ phash64(other)).count("1")
    assert d_same <= 4 < d_other


def test_near_duplicates_hand_example():
    h = np.array([0b0000, 0b0111, 0b0001, 0b1111 << 60], dtype=np.uint64)
    # distances: (1,0)=3, (2,0)=1, (2,1)=2, (3,0)=4, (3,1)=7, (3,2)=5
    assert near_duplicates(h, 1) == [(2, 0, 1)]
    assert near_duplicates(h, 3) == [(1, 0, 3), (2, 0, 1)]
    assert near_duplicates(h, 4) == [(1, 0, 3), (2, 0, 1), (3, 0, 4)]
    # the same answer with a tiny block size (vectorised blocks must not change results)
    assert near_duplicates(h, 4, block_elems=1) == [(1, 0, 3), (2, 0, 1), (3, 0, 4)]
    assert near_duplicates(np.zeros(0, np.uint64), 4) == []


def test_manifest_problems_are_collected_not_raised(tmp_path):
    root = tmp_path / "c"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(smooth(8, 8, i)).save(root / "img" / f"{i}.png")
    (root / "classes.txt").write_text("x\ny\n")
    (root / "m.csv").write_text("path,label\nimg/0.png,x\nimg/1.png,zebra\n../../etc/passwd,x\nimg/9.png,y\nimg/2.png,y\n")
    rep = validate(root, few_samples=0)
    assert rep.counts() == {"missing-file": 1, "unknown-class": 1, "unsafe-path": 1}
    paths = {p.code: p.path for p in rep.problems}
    assert paths == {"unknown-class": f"{root / 'm.csv'}:3", "unsafe-path": f"{root / 'm.csv'}:4", "missing-file": f"{root / 'm.csv'}:5"}
    assert rep.stats["images"] == 2


def test_coco_size_mismatch_and_bad_category(tmp_path):
    root = tmp_path / "k"
    (root / "images").mkdir(parents=True)
    Image.fromarray(smooth(10, 12, 0)).save(root / "images" / "a.png")
    obj = {"images": [{"id": 1, "file_name": "a.png", "width": 99, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]},
                           {"id": 2, "image_id": 1, "category_id": 42, "bbox": [0, 0, 5, 5]},
                           {"id": 3, "image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5]}],
           "categories": [{"id": 1, "name": "a"}]}
    (root / "ann.json").write_text(json.dumps(obj))
    rep = validate(root, few_samples=0)
    assert rep.counts() == {"bad-annotation": 1, "bad-label": 1, "size-mismatch": 1}
    assert {p.code: p.path for p in rep.problems}["size-mismatch"] == str(root / "images" / "a.png")
