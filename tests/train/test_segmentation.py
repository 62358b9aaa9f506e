"""The engine on a segmentation task: pixels are samples (masks in, mIoU and pixel IM out)."""

import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.train import evaluate, fit


def _seg_folder(root, n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nsquare\n")
    for i in range(n):
        img = rng.normal(0.3 + shift, 0.1, (16, 16))
        mask = np.zeros((16, 16), np.uint8)
        r, c = rng.integers(0, 9, 2)
        img[r : r + 7, c : c + 7] += 0.5
        mask[r : r + 7, c : c + 7] = 1
        mask[0, 0] = 255  # an ignored pixel
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def test_segmentation_source_only_and_entropy(tmp_path, fast):
    src = _seg_folder(tmp_path / "src", 16, 0)
    tgt = _seg_folder(tmp_path / "tgt", 8, 1, 0.1)
    tt = _seg_folder(tmp_path / "tt", 8, 2, 0.1)
    r = fit(src, tgt, target_test=tt, task="segmentation", method="im", epochs=4, iters_per_epoch=8, lr=3e-3, out=tmp_path / "run",
            method_options={"im_weight": 0.1}, **fast)
    miou = [h["target_test_miou"] for h in r["history"]]
    assert miou[-1] > 0.6 and miou[-1] > miou[0]
    assert all("select_im" in h and "target_test_iou_square" in h for h in r["history"])
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["resolved"]["classes"] == ["background", "square"]
    ev = evaluate(tmp_path / "run" / "checkpoints" / "best.safetensors", tt, out=tmp_path / "ev", progress=False)
    assert ev["miou"] == pytest.approx(r["selected"]["target_test_miou"], abs=1e-6)
    assert (tmp_path / "ev" / "metrics.json").is_file()
