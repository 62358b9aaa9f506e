"""The engine on a segmentation task: pixels are samples (masks in, mIoU and pixel IM out)."""

import json

import pytest

from shiftkit.train import evaluate, fit


def test_segmentation_source_only_and_entropy(tmp_path, fast, seg_folder):
    src = seg_folder(tmp_path / "src", 16, 0)
    tgt = seg_folder(tmp_path / "tgt", 8, 1, 0.1)
    tt = seg_folder(tmp_path / "tt", 8, 2, 0.1)
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
