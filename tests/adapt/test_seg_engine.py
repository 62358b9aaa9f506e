"""Segmentation methods through the one engine (`shiftkit train --task segmentation --method ...`)."""

import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.train import fit


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
        mask[0, 0] = 255
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return {"source": _seg_folder(root / "src", 16, 0), "target": _seg_folder(root / "tgt", 8, 1, 0.15),
            "target_test": _seg_folder(root / "tt", 8, 2, 0.15)}


FAST = dict(backbone="small_cnn", size=16, batch_size=8, progress=False, log_every=1, epochs=2, iters_per_epoch=3, lr=3e-3)


@pytest.mark.parametrize("method,options", [
    ("advent", {"lambda_adv_main": 0.01}),
    ("adaptseg", {"gan": "ls"}),
    ("minent", {"lambda_ent": 0.1, "crp": True}),
    ("fda-st", {"st_start": 0.5, "lambda_ent": 0.05}),
])
def test_engine_runs_segmentation_methods(tmp_path, folders, method, options):
    r = fit(folders["source"], folders["target"], target_test=folders["target_test"], task="segmentation", method=method,
            method_options=options, out=tmp_path / "run", **FAST)
    assert r["method"].startswith(method)
    assert all("target_test_miou" in h for h in r["history"])
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    keys = set().union(*[s.keys() for s in steps if s.get("event") == "step"])
    if method in ("advent", "adaptseg"):
        assert {"adv_main", "disc_main", "loss_phase0", "loss_phase1"} <= keys
    if method == "fda-st":
        assert "st" in keys and any(s.get("event") == "pseudo_labels" for s in steps)


def test_ensemble_evaluation_of_two_checkpoints(tmp_path, folders):
    from shiftkit.train.seg_eval import evaluate_segmentation

    ckpts = []
    for m in ("minent", "advent"):
        r = fit(folders["source"], folders["target"], task="segmentation", method=m, out=tmp_path / m, **FAST)
        ckpts.append(r["checkpoint"])
    one = evaluate_segmentation(ckpts[:1], folders["target_test"], progress=False)
    both = evaluate_segmentation(ckpts, folders["target_test"], out=tmp_path / "ens", progress=False)
    assert both["ensemble"] and not one["ensemble"]
    assert 0.0 <= both["miou"] <= 1.0 and both["pixels"] == one["pixels"]
    assert (tmp_path / "ens" / "figures" / "predictions.png").is_file()
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["miou"] == pytest.approx(both["miou"])


def test_bad_mask_refused_before_evaluation(tmp_path, folders):
    import shutil

    from shiftkit.errors import DatasetError
    from shiftkit.train.seg_eval import evaluate_segmentation

    r = fit(folders["source"], None, task="segmentation", method="source-only", out=tmp_path / "so", **FAST)
    bad = tmp_path / "bad"
    shutil.copytree(folders["target_test"], bad)
    m = np.array(Image.open(bad / "masks" / "003.png"))
    m[2, 2] = 7
    Image.fromarray(m).save(bad / "masks" / "003.png")
    with pytest.raises(DatasetError, match="not classes") as exc:
        evaluate_segmentation([r["checkpoint"]], bad, progress=False)
    assert "003.png" in str(exc.value.path)
