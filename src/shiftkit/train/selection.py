"""Label-free model selection scores, and the rule that picks the checkpoint.

Scores use predictions (and features) on the unlabeled target set only; higher is better.
- im: information maximisation, IM = H(mean_i p_i) - mean_i H(p_i): confident and diverse.
- snd: soft neighbourhood density (Saito et al., ICCV 2021): with L2-normalised features,
  S = F F^T (self excluded), P = softmax(S / t) per row, SND = mean_i H(P_i). Higher = denser
  neighbourhoods relative to the spread, which tracks target accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftkit.adapt.losses import entropy

SELECT_MODES = ("label-free", "target-test", "source-val", "last")


def im_score(probs: torch.Tensor) -> float:
    """H(mean p) - mean H(p) on (N, C) probabilities."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"im_score takes (N, C) probabilities, got {tuple(probs.shape)}")
    probs = probs.double()
    return float(entropy(probs.mean(0), dim=0) - entropy(probs).mean())


def snd_score(features: torch.Tensor, temperature: float = 0.05, max_samples: int = 2048) -> float:
    """Soft neighbourhood density of (N, D) features (first `max_samples` rows)."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"snd_score takes (N >= 2, D) features, got {tuple(features.shape)}")
    f = F.normalize(features[:max_samples].double(), dim=1)
    s = f @ f.t()
    s.fill_diagonal_(float("-inf"))
    p = F.softmax(s / temperature, dim=1)
    return float(entropy(p).mean())


class Selector:
    """Keeps the best epoch by the chosen score. `mode` in SELECT_MODES; `key` names the score."""

    def __init__(self, mode: str, task: str = "classification"):
        if mode not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {mode!r}")
        self.mode = mode
        seg = task == "segmentation"
        self.target_key = "target_test_miou" if seg else "target_test_balanced_accuracy"
        self.source_key = "source_val_miou" if seg else "source_val_accuracy"
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def key(self) -> str:
        return {"label-free": "select_im", "target-test": self.target_key,
                "source-val": self.source_key, "last": "epoch"}[self.mode]

    def update(self, epoch: int, metrics: dict) -> bool:
        """True when this epoch is the new best (ties keep the earlier epoch, except mode last)."""
        value = float(epoch) if self.mode == "last" else metrics.get(self.key)
        if value is None:
            raise ValueError(f"selection score {self.key!r} missing at epoch {epoch}")
        if self.best is None or value > self.best or self.mode == "last":
            self.best, self.best_epoch = float(value), int(epoch)
            return True
        return False

    def state(self) -> dict:
        return {"mode": self.mode, "best": self.best, "best_epoch": self.best_epoch}

    def load(self, state: dict) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
