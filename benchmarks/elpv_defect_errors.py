"""Where B1's fine-tuned models fail, for reporting only (nothing here chooses a model or a setting).

For each run folder of `benchmarks/elpv_defect.py`, on the validation half with flip TTA: accuracy,
defective recall and ROC AUC, split by cell type (mono / poly, read from the installed elpv-dataset's
labels.csv), and the best accuracy any decision threshold reaches with defective recall >= 0.90 (whether
the goal is a threshold away or needs a better ranking). Probabilities are cached in each run folder.

    python benchmarks/elpv_defect_errors.py --size 300 runs/b1hr/e16/finetune+aug/seed0 runs/b1hr/e16/finetune+aug/seed1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from elpv_defect import load_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders holding checkpoints/best.safetensors")
    ap.add_argument("--size", type=int, required=True, help="the input side the runs were trained at")
    ap.add_argument("--data", default=None, help="benchmark folder (default runs/data/elpv-defect)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    import elpv_dataset
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from shiftkit.adapt.augmented import predict_probs
    from shiftkit.train.checkpoint import load_model
    from shiftkit.train.loaders import open_any

    if a.threads:
        torch.set_num_threads(a.threads)
    labels_csv = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    cell_type = {ln.split()[0].rsplit("/", 1)[-1]: ln.split()[2] for ln in labels_csv.read_text().splitlines() if ln.strip()}
    val = C.prepare_data("elpv-defect", a.data) / "val"
    types = np.array([cell_type[Path(p).name] for p in open_any(val, task="classification").paths()])
    x, y, classes = load_split(val, a.size)
    d = classes.index("defective")
    y = (y.numpy() == d).astype(int)
    for run in a.runs:
        cache = Path(run) / "val_probs.npy"
        if not cache.exists():
            model, _, _ = load_model(Path(run) / "checkpoints" / "best.safetensors", "cpu")
            np.save(cache, predict_probs(model, x, "flips").numpy())
        p = np.load(cache)[:, d]
        pred = (p >= 0.5).astype(int)
        print(f"{run}: accuracy {(pred == y).mean():.4f} recall_defective {pred[y == 1].mean():.4f} auc {roc_auc_score(y, p):.4f}")
        for t in ("mono", "poly"):
            k = types == t
            print(f"  {t}: {k.sum()} cells, {int(y[k].sum())} defective: accuracy {(pred[k] == y[k]).mean():.4f} "
                  f"recall_defective {pred[k][y[k] == 1].mean():.4f} recall_functional {(1 - pred[k][y[k] == 0]).mean():.4f} "
                  f"auc {roc_auc_score(y[k], p[k]):.4f}")
        reach = [float(((p >= t) == y).mean()) for t in np.unique(p) if (p >= t)[y == 1].mean() >= 0.90]
        print(f"  best accuracy of any threshold with recall_defective >= 0.90: {max(reach):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
