"""Label-preserving augmentation: pure batched ops on (image, mask, boxes) together, and policies."""

from shiftkit.augment.functional import (
    GEOMETRIC_OPS,
    PHOTOMETRIC_OPS,
    apply_op,
)

__all__ = ["GEOMETRIC_OPS", "PHOTOMETRIC_OPS", "apply_op"]
