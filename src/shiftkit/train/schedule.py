"""Learning-rate schedules, applied per iteration as a multiplier of the base learning rates."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Linear warm-up then cosine decay.

    f(s) = (s + 1) / warmup                                   for s < warmup
    f(s) = m + (1 - m) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2   afterwards (m = min_ratio)
    """
    if total <= 0:
        raise ValueError(f"total steps must be > 0, got {total}")
    if warmup < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"need warmup >= 0 and 0 <= min_ratio <= 1, got {warmup}, {min_ratio}")
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def constant(step: int, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def dann_annealing(step: int, total: int, warmup: int = 0, min_ratio: float = 0.0, alpha: float = 10.0, beta: float = 0.75) -> float:
    """DANN's schedule: f(p) = (1 + alpha * p) ** -beta, p = step / total."""
    return (1.0 + alpha * min(1.0, step / max(1, total))) ** (-beta)


SCHEDULES = {"cosine": warmup_cosine, "constant": constant, "dann": dann_annealing}
