"""Segmentation methods through the one engine (`shiftkit train --task segmentation --method ...`)."""

import json

import numpy as np
import pytest
from PIL import Image

from shiftkit.train import fit


@pytest.fixture(scope="module")
def folders(tmp_path_factory, seg_folder):
    root = tmp_path_factory.mktemp("seg")
    return {"source": seg_folder(root / "src", 16, 0), "target": seg_folder(root / "tgt", 8, 1, 0.15),
            "target_test": seg_folder(root / "tt", 8, 2, 0.15)}


FAST = dict(backbone="small_cnn", size=16, batch_size=8, progress=False, log_every=1, epochs=2, iters_per_epoch=3, lr=3e-3)


@pytest.mark.parametrize("method,options", [
    ("advent", {"lambda_adv_main": 0.01}),
    ("adaptseg", {"gan": "ls"}),
    ("minent", {"lambda_ent": 0.1, "crp": True}),
    ("fda-st", {"st_start": 0.5, "lambda_ent": 0.05}),
    ("fda-st", {"st_start": 0.5, "st_prior": "source"}),
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
        config = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["method"]
        assert config["st_prior"] == options.get("st_prior")


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


def test_engine_uses_the_methods_discriminator_optimiser(tmp_path, folders):
    import torch

    from shiftkit.train.engine import Engine, TrainConfig

    cfg = TrainConfig(source=str(folders["source"]), target=str(folders["target"]), task="segmentation", method="advent",
                      out=str(tmp_path / "e"), **FAST)
    eng = Engine(cfg)
    eng.setup()
    d = eng.optimizers["disc_main"]
    assert isinstance(d, torch.optim.Adam) and not isinstance(d, torch.optim.AdamW)
    assert d.param_groups[0]["betas"] == (0.9, 0.99) and d.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_train_refuses_bad_masks_before_training(tmp_path, folders):
    import shutil

    from shiftkit.errors import DatasetError

    src = tmp_path / "src"
    shutil.copytree(folders["source"], src)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(src / "masks" / "004.png")  # wrong size
    with pytest.raises(DatasetError, match="mask is 12x12") as exc:
        fit(src, folders["target"], task="segmentation", method="advent", out=tmp_path / "run", **FAST)
    assert "004.png" in str(exc.value.path)
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


def test_cli_evaluate_ensemble(tmp_path, folders, capsys):
    from shiftkit.cli import main

    ckpts = [fit(folders["source"], folders["target"], task="segmentation", method=m, out=tmp_path / m, **FAST)["checkpoint"]
             for m in ("minent", "advent")]
    code = main(["evaluate", "--model", ckpts[0], "--model", ckpts[1], "--data", str(folders["target_test"]),
                 "--out", str(tmp_path / "ens"), "--no-progress", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ensemble"] and len(r["model"]) == 2 and 0.0 <= r["miou"] <= 1.0
    assert (tmp_path / "ens" / "figures" / "predictions.png").is_file()
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["miou"] == pytest.approx(r["miou"])
    one = main(["evaluate", "--model", ckpts[0], "--data", str(folders["target_test"]), "--no-progress"])
    assert one == 0 and "mIoU" in capsys.readouterr().out
