"""SegTensors: resized images, nearest-neighbour masks, id -> class mapping; bad masks refused up front."""

import numpy as np
import pytest
import torch
from PIL import Image

from shiftkit.data import open_dataset
from shiftkit.errors import DatasetError
from shiftkit.train.seg_data import SegTensors, check_masks, collate_seg, id_lut


def _folder(root, masks, size=8, classes="background\nthing\n"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(classes)
    for i, m in enumerate(masks):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.asarray(m, np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def test_segtensors_resize_and_ignore(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[:4, :4] = 1
    m[7, 7] = 255
    ds = open_dataset(_folder(tmp_path / "a", [m, m]), task="segmentation")
    st = SegTensors(ds, 4, 3)
    it = st[0]
    assert it["x"].shape == (3, 4, 4) and it["x"].dtype == torch.float32
    assert it["y"].shape == (4, 4) and it["y"].dtype == torch.long
    assert it["y"][0, 0] == 1 and it["y"][3, 3] in (0, 255)
    b = collate_seg([st[0], st[1]])
    assert b["y"].shape == (2, 4, 4) and b["index"].tolist() == [0, 1]
    unl = SegTensors(ds, 4, 3, labelled=False)[0]
    assert (unl["y"] == 255).all()


def test_id_lut_maps_sparse_ids():
    lut = id_lut([0, 7])
    assert lut[0] == 0 and lut[7] == 1 and lut[255] == 255 and lut[3] == -1


def test_check_masks_names_the_file(tmp_path):
    good = np.zeros((8, 8), np.uint8)
    bad = good.copy()
    bad[0, 0] = 9  # not a class
    ds = open_dataset(_folder(tmp_path / "b", [good, bad]), task="segmentation")
    with pytest.raises(DatasetError) as exc:
        check_masks(ds, progress=False, what="source")
    assert "1.png" in str(exc.value.path) or "1.png" in str(exc.value)
    ok = open_dataset(_folder(tmp_path / "c", [good, good]), task="segmentation")
    check_masks(ok, progress=False)
