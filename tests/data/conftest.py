"""Tiny datasets built on the fly (a few 8x6 .. 20x16 images) for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save(path: Path, arr: np.ndarray, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **kw)
    return path


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def gray(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def exif_rotated_jpeg(path: Path, arr: np.ndarray, orientation: int = 6) -> Path:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def make_imagefolder(root: Path) -> Path:
    save(root / "cat" / "a.png", rgb(6, 8, 0))
    save(root / "cat" / "sub" / "b.png", gray(6, 8, 1))
    exif_rotated_jpeg(root / "cat" / "f.jpg", rgb(6, 8, 2))
    save(root / "dog" / "c.jpg", rgb(6, 8, 3), quality=95)
    rgba = np.dstack([rgb(6, 8, 4), gray(6, 8, 5)])
    save(root / "dog" / "d.png", rgba)
    img16 = Image.fromarray((gray(6, 8, 6).astype(np.uint16) * 257 + 3).astype(np.uint16))
    img16.save(root / "dog" / "e.png")
    return root


def make_csv(root: Path) -> Path:
    save(root / "img" / "1.png", rgb(6, 8, 10))
    save(root / "img" / "2.png", rgb(6, 8, 11))
    save(root / "img" / "3.png", gray(6, 8, 12))
    (root / "data.csv").write_text("path,label\nimg/2.png,ok\nimg/1.png,bad\nimg/3.png,ok\n")
    return root / "data.csv"


def make_folder(root: Path) -> Path:
    save(root / "x.png", rgb(6, 8, 20))
    save(root / "deep" / "y.png", rgb(6, 8, 21))
    return root


def make_segmentation(root: Path, palette: bool = True) -> Path:
    save(root / "images" / "a.png", rgb(6, 8, 30))
    save(root / "images" / "b.jpg", rgb(6, 8, 31))
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 1
    m[4, :] = 2
    m[0, 0] = 255
    pim = Image.fromarray(m, "L").convert("P")
    pal = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [7] * (768 - 9)
    pim.putpalette(pal)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if palette:
        pim.save(root / "masks" / "a.png")
    else:
        save(root / "masks" / "a.png", m)
    save(root / "masks" / "b.png", (m == 1).astype(np.uint8) * 2)
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    return root


COCO_CATS = [{"id": 7, "name": "truck", "supercategory": "vehicle"}, {"id": 3, "name": "car", "supercategory": "vehicle"}]


def make_coco(root: Path) -> Path:
    save(root / "images" / "p.png", rgb(16, 20, 40))
    save(root / "images" / "q.png", rgb(16, 20, 41))
    obj = {
        "info": {"description": "tiny"},
        "licenses": [{"id": 1, "name": "x"}],
        "images": [
            {"id": 5, "file_name": "p.png", "width": 20, "height": 16, "license": 1},
            {"id": 9, "file_name": "q.png", "width": 20, "height": 16},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 5.5, 4], "area": 22.0, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [10.1, 3.3, 6.2, 7.7], "area": 47.74, "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 20, 16], "area": 320, "iscrowd": 0},
        ],
        "categories": COCO_CATS,
    }
    (root / "annotations.json").write_text(json.dumps(obj))
    return root


def make_yolo(root: Path, yaml: bool = False) -> Path:
    save(root / "images" / "train" / "u.png", rgb(16, 20, 50))
    save(root / "images" / "v.jpg", rgb(16, 20, 51))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "u.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.1 0.2 0.1 0.1\n")
    (root / "labels" / "v.txt").write_text("1 0.333333 0.666667 0.2 0.3\n")
    if yaml:
        (root / "data.yaml").write_text("path: .\ntrain: images\nnames:\n  0: person\n  1: 'bike'\n")
    else:
        (root / "classes.txt").write_text("person\nbike\n")
    return root


@pytest.fixture
def build():
    """build(kind, root) -> path to open."""
    return {
        "imagefolder": make_imagefolder,
        "csv": make_csv,
        "folder": make_folder,
        "segmentation": make_segmentation,
        "coco": make_coco,
        "yolo": make_yolo,
    }
