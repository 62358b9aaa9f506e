"""Build docs/translator_example.png: what `shiftkit translator` does, on scikit-image's bundled photos.

A = 96x96 crops of the bundled colour photos; B = *other* crops of the same photos drawn as a
poster (4 levels per channel, dark outlines): a style that colour statistics alone cannot reach
(FDA / histogram matching move colours, they do not draw outlines or flatten shading). A CUT
translator is trained briefly on A -> B (unpaired: B's crops are different places), then applied
to crops from held-out photos. The grid shows: the source crop, G(source), and the same crop
drawn in the target style by the rule (never seen in training), for reference.

    .venv/bin/python docs/translator_example.py --steps 400 --size 64
Takes a few minutes on two CPU cores. The photos are scikit-image's bundled public-domain/CC0 images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
HELD_OUT = ("chelsea", "colorwheel")


def poster(img: np.ndarray) -> np.ndarray:
    """4 levels per channel plus dark outlines where the luminance gradient is strong."""
    from scipy import ndimage

    x = img.astype(np.float32) / 255.0
    q = np.floor(x * 3.999) / 3.0
    g = x @ np.array([0.299, 0.587, 0.114], np.float32)
    g = ndimage.gaussian_filter(g, 1.0)
    mag = np.hypot(ndimage.sobel(g, 0), ndimage.sobel(g, 1))
    edge = mag > np.quantile(mag, 0.85)
    q[edge] *= 0.15
    return (q * 255).round().astype(np.uint8)


def crops(img: np.ndarray, n: int, size: int, rng: np.random.Generator, part: str) -> list[np.ndarray]:
    """n random size x size crops from the left ("a") or right ("b") half of img."""
    h, w = img.shape[:2]
    lo, hi = (0, w // 2 - size) if part == "a" else (w // 2, w - size)
    out = []
    for _ in range(n):
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(lo, max(lo + 1, hi + 1)))
        out.append(np.ascontiguousarray(img[y : y + size, x : x + size, :3]))
    return out


def main(argv=None) -> int:
    import skimage.data
    import torch

    from shiftkit.data import DatasetWriter, Sample
    from shiftkit.models.translator import translate
    from shiftkit.report.grid import save_grid
    from shiftkit.train.translator_loop import TranslatorConfig, load_translator, train_translator
    from shiftkit.transfer.learned import work_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "translator_example.png"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    work = Path(a.work or tempfile.mkdtemp(prefix="shiftkit-translator-example-"))
    if not (work / "B").is_dir():
        with DatasetWriter(work / "A", format="folder") as wa, DatasetWriter(work / "B", format="folder") as wb:
            for name in TRAIN_PHOTOS:
                img = getattr(skimage.data, name)()[..., :3]
                for k, c in enumerate(crops(img, 24, a.crop, rng, "a")):
                    wa.write(Sample(c, None, f"{name}_{k:02d}.png"))
                for k, c in enumerate(crops(poster(img), 24, a.crop, rng, "b")):
                    wb.write(Sample(c, None, f"{name}_{k:02d}.png"))
    m = train_translator(TranslatorConfig(str(work / "A"), str(work / "B"), str(work / "T"), size=a.size, steps=a.steps,
                                          preset="fastcut" if a.fast else "cut", threads=a.threads, grid_every=0))
    g, info = load_translator(work / "T")
    rows, labels = [], []
    for name in HELD_OUT:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[:2]
        c = np.ascontiguousarray(img[(h - a.crop * 2) // 2 :][: a.crop * 2, (w - a.crop * 2) // 2 :][:, : a.crop * 2])
        x = torch.from_numpy(c).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            # the scale seen in training: crops of a.crop px were resized to load_size px
            y = translate(g, x, size=2 * work_size(info))
        rows.append([c, (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), poster(c)])
        labels.append(f"skimage.data.{name} (held out)")
    titles = ["source photo", f"CUT G(A), {m['steps']} steps", "target style by rule (not seen)"]
    save_grid(a.out, rows, titles, labels, cell=128)
    print(f"{a.out}: {m['steps']} steps at {m['size']} px in {m['train_s']:.0f} s; work folder {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
