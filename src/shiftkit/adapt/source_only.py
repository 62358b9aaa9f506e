"""Source-only training: supervised cross-entropy on the labeled source, nothing on the target.

The baseline every adaptation method is compared with (and the fine-tuning recipe of B1).
"""

from __future__ import annotations

from shiftkit.adapt.base import UDAMethod


class SourceOnly(UDAMethod):
    def __init__(self, label_smoothing: float = 0.0, class_weights=None, ignore_index: int = -100):
        super().__init__([], "source-only", label_smoothing, class_weights, source_only=True, ignore_index=ignore_index)
