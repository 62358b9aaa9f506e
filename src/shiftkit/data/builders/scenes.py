"""B5 `digit-scenes`: segmentation UDA from clean digit renders to MNIST-M-style textured scenes.

Each canvas (64x64 RGB) holds 1-3 MNIST digits, each scaled to 24..36 px and placed at random
(boxes overlapping at most 20% of the smaller box where a free spot is found in 20 tries).
With a = digit intensity in [0, 1] and colour c in [0.75, 1]^3 (one per digit):

    source (clean):  img = g * (1 - a) + c * a,  g in [0, 0.25] a flat dark gray per canvas
    target (MNIST-M): img = | crop - a |           crop = random crop of a real photo (Ganin et al. 2016)

Mask: 0 = background, digit + 1 where a > 0.5 (later digits drawn over earlier ones); 11 classes.
Source digits come from MNIST train, target-train from MNIST validation, target-test from MNIST
test; target-train and target-test use disjoint photos. Every canvas is drawn from its own RNG
seeded by (seed, split, index), so the plan is fixed before any pixel is rendered and a resumed
build renders exactly the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftkit.data.builders.core import BenchmarkPlan, Item, SplitPlan, subset
from shiftkit.data.builders.sources import MNIST_LICENCE, DigitArrays, load_mnist, package_version
from shiftkit.data.sample import Sample
from shiftkit.errors import ResourceError

CLASSES = ["background"] + [str(d) for d in range(10)]
SIZE = 64
DIGIT_MIN, DIGIT_MAX = 24, 36
STROKE = 0.5  # digit intensity above which a pixel is labelled as the digit
MAX_OVERLAP = 0.2  # of the smaller box, when a free spot is found in 20 tries

# (function in skimage.data, file in skimage/data, licence as its docstring states)
PHOTOS_TRAIN = [
    ("astronaut", "astronaut.png", "public domain (NASA)"),
    ("coffee", "coffee.png", "CC0 (Rachel Michetti)"),
    ("rocket", "rocket.jpg", "public domain (SpaceX)"),
    ("hubble_deep_field", "hubble_deep_field.jpg", "public domain (NASA)"),
    ("grass", "grass.png", "CC0 (CC0Textures)"),
    ("camera", "camera.png", "CC0 (Lav Varshney)"),
]
PHOTOS_TEST = [
    ("chelsea", "chelsea.png", "CC0 (Stefan van der Walt)"),
    ("immunohistochemistry", "ihc.png", "no known copyright restrictions"),
    ("brick", "brick.png", "CC0 (CC0Textures)"),
    ("gravel", "gravel.png", "CC0 (CC0Textures)"),
    ("coins", "coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    ("retina", "retina.jpg", "CC0 1.0"),
]
DEFAULT_COUNTS = {"source": 6000, "target": 3000, "target-test": 1000}
_SPLIT_ID = {"source": 0, "target": 1, "target-test": 2}


@dataclass(frozen=True)
class Placement:
    index: int  # digit index in its MNIST part
    label: int
    size: int  # px, square
    y: int
    x: int
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one canvas; drawn at plan time, rendered lazily."""

    digits: tuple[Placement, ...]
    gray: float  # source background level
    photo: int  # index into the split's photo list (target splits)
    crop: tuple[int, int, int]  # y, x, side of the square crop in the photo (resized to SIZE)


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ya, xa, sa), (yb, xb, sb) = a, b
    h = max(0, min(ya + sa, yb + sb) - max(ya, yb))
    w = max(0, min(xa + sa, xb + sb) - max(xa, xb))
    return h * w / min(sa * sa, sb * sb)


def draw_spec(rng: np.random.Generator, digits: DigitArrays, photo_shapes: list[tuple[int, int]]) -> SceneSpec:
    """Random layout of one canvas (see the module doc for the ranges)."""
    n = int(rng.integers(1, 4))
    placed: list[Placement] = []
    for _ in range(n):
        size = int(rng.integers(DIGIT_MIN, DIGIT_MAX + 1))
        for _try in range(20):
            y, x = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
            if all(_overlap((y, x, size), (p.y, p.x, p.size)) <= MAX_OVERLAP for p in placed):
                break
        idx = int(rng.integers(0, len(digits)))
        colour = tuple(float(v) for v in rng.uniform(0.75, 1.0, 3))
        placed.append(Placement(idx, int(digits.labels[idx]), size, y, x, colour))
    gray = float(rng.uniform(0.0, 0.25))
    photo = int(rng.integers(0, len(photo_shapes))) if photo_shapes else 0
    crop = (0, 0, 0)
    if photo_shapes:
        h, w = photo_shapes[photo]
        side = int(rng.integers(SIZE, max(SIZE, min(h, w) // 2) + 1))
        crop = (int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side)
    return SceneSpec(tuple(placed), gray, photo, crop)


def digit_layers(spec: SceneSpec, digits: DigitArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha HxW float32 in [0, 1], colour HxWx3 float32, mask HxW uint8) of a canvas's digits."""
    from PIL import Image

    alpha = np.zeros((SIZE, SIZE), np.float32)
    colour = np.zeros((SIZE, SIZE, 3), np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for p in spec.digits:
        d = Image.fromarray(digits.images[p.index]).resize((p.size, p.size), Image.BILINEAR)
        a = np.asarray(d, dtype=np.float32) / 255.0
        win = (slice(p.y, p.y + p.size), slice(p.x, p.x + p.size))
        alpha[win] = np.maximum(alpha[win], a)
        stroke = a > STROKE
        colour[win][a > 0] = p.colour
        mask[win][stroke] = p.label + 1
    return alpha, colour, mask


def render_source(spec: SceneSpec, digits: DigitArrays) -> tuple[np.ndarray, np.ndarray]:
    """Clean render: img = g (1 - a) + c a on a flat dark gray g."""
    alpha, colour, mask = digit_layers(spec, digits)
    a = alpha[:, :, None]
    img = spec.gray * (1.0 - a) + colour * a
    return _to_u8(img), mask


def render_target(spec: SceneSpec, digits: DigitArrays, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M blend: img = |crop - a| per channel, crop a random square of a real photo resized to 64x64."""
    from PIL import Image

    alpha, _, mask = digit_layers(spec, digits)
    y, x, side = spec.crop
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE), Image.BILINEAR)
    bg = np.asarray(crop, dtype=np.float32) / 255.0
    img = np.abs(bg - alpha[:, :, None])
    return _to_u8(img), mask


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def load_photos(names: list[tuple[str, str, str]]) -> list[np.ndarray]:
    """The bundled scikit-image photos as uint8 HxWx3 (gray ones replicated), read by shiftkit's decoder."""
    from shiftkit.data.images import read_image

    try:
        import skimage
    except ImportError:
        raise ResourceError("scikit-image is not installed", None, "pip install scikit-image") from None
    root = Path(skimage.__file__).parent / "data"
    out = []
    for _, fname, _ in names:
        path = root / fname
        if not path.is_file():
            raise ResourceError("photo missing from the scikit-image package", path, "pip install --force-reinstall scikit-image")
        img, _ = read_image(path)
        out.append(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img)
    return out


def plan_digit_scenes(
    seed: int = 0,
    limit: int | None = None,
    counts: dict[str, int] | None = None,
    mnist: dict[str, DigitArrays] | None = None,
) -> BenchmarkPlan:
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    if any(v < 1 for v in counts.values()):
        raise ValueError(f"every split needs at least 1 canvas, got {counts}")
    mnist = mnist or load_mnist()
    photos = {"target": load_photos(PHOTOS_TRAIN), "target-test": load_photos(PHOTOS_TEST)}
    parts = {"source": "train", "target": "validation", "target-test": "test"}
    from shiftkit.data.builders.digits import mnist_origin

    sk = f"scikit-image {package_version('scikit-image')}"
    splits = []
    for name in ("source", "target", "target-test"):
        digits = mnist[parts[name]]
        shapes = [p.shape[:2] for p in photos.get(name, [])]
        specs = [draw_spec(np.random.default_rng([seed, _SPLIT_ID[name], i]), digits, shapes) for i in range(counts[name])]
        items = []
        for i, spec in enumerate(specs):
            rel = f"scene-{i:05d}.png"
            if name == "source":
                make = lambda spec=spec, rel=rel, d=digits: Sample(*render_source(spec, d), rel)
            else:
                make = lambda spec=spec, rel=rel, d=digits, ph=photos[name]: Sample(*render_target(spec, d, ph[spec.photo]), rel)
            items.append(Item(rel, None, make))
        chosen = subset(items, limit)
        keep = {it.path for it in chosen}
        balance = {c: 0 for c in CLASSES[1:]}
        for it, spec in zip(items, specs, strict=True):
            if it.path in keep:
                for p in spec.digits:
                    balance[str(p.label)] += 1
        if name == "source":
            origin = mnist_origin("train") + "; rendered on flat dark backgrounds"
            licence = MNIST_LICENCE
            rule = f"{counts[name]} canvases of 1-3 MNIST train digits, clean renders, seed {seed}"
        else:
            listed = PHOTOS_TRAIN if name == "target" else PHOTOS_TEST
            origin = (mnist_origin(parts[name]) + f"; blended MNIST-M style into crops of photos bundled with {sk}: "
                      + ", ".join(n for n, _, _ in listed))
            licence = MNIST_LICENCE + "; photos: " + "; ".join(f"{n}: {lic}" for n, _, lic in listed)
            rule = (f"{counts[name]} canvases of 1-3 MNIST {parts[name]} digits on crops of "
                    f"{'target-train' if name == 'target' else 'target-test'} photos (disjoint sets), seed {seed}")
        notes = [
            "Mask: masks/<name>.png, 0 = background, digit + 1 on stroke pixels (digit intensity > 0.5); classes.txt lists the 11 classes.",
            f"Canvas {SIZE}x{SIZE} RGB; digits scaled to {DIGIT_MIN}..{DIGIT_MAX} px; every canvas uses its own RNG seeded by (seed, split, index).",
        ]
        splits.append(SplitPlan(name, "segmentation", CLASSES, chosen, origin, licence, rule, labelled=True, notes=notes,
                                balance_unit="digits", balance=balance))
    return BenchmarkPlan(
        "digit-scenes", seed,
        "B5: segmentation UDA from clean digit renders (source) to MNIST-M-style digits on real photos (target).",
        splits, limit,
    )
