"""Augmentation plans: which label-preserving ops, at what strength, for which classes, how many.

A plan is JSON so that a person can read and edit what `shiftkit analyze` recommends:
```json
{"version": 1,
 "ops": [{"op": "brightness_to", "low": 0.15, "high": 0.35, "p": 0.7, "classes": ["defective"],
          "why": "defective recall drops to 0.41 for brightness in [0.15, 0.35]"},
         {"op": "hflip", "p": 0.5}],
 "balance": {"target_ratio": 1.0, "classes": ["defective"], "rule": "full"},
 "new_samples": {"defective": 397},
 "reasoning": ["..."]}
```
`new_samples` is optional: when absent it is derived from `balance` and the dataset's counts.
`balance.rule` is `full` (grow each balanced class to target_ratio x the largest class, the
source article's rule) or `sqrt` (grow it to the geometric mean of its own count and the largest,
square-root class balancing as in Mahajan et al. 2018 and Kang et al. 2020: a minority of 357
against 754 grows to 519, not 754). Full balancing also moves the model's prior from the data's
class ratio to 1:1, which trades accuracy for minority recall; square-root balancing goes half
way (in log-odds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from shiftkit.augment.functional import GEOMETRIC_OPS, PHOTOMETRIC_OPS
from shiftkit.errors import ShiftkitError

# Default strength ranges for `--balance --ops ...` without a plan: mild, label-preserving.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "brightness": (0.7, 1.3),
    "brightness_to": (0.2, 0.8),
    "contrast": (0.7, 1.3),
    "gamma": (0.7, 1.4),
    "blur": (0.5, 1.5),
    "sharpen": (1.5, 3.0),
    "noise": (0.01, 0.05),
    "saturation": (0.6, 1.4),
    "hue": (-0.05, 0.05),
    "crop": (0.6, 1.0),  # fraction of the area kept
}
DEFAULT_OPS = ("hflip", "brightness", "contrast", "blur", "noise")
BALANCE_RULES = ("full", "sqrt")
KNOWN_OPS = tuple(GEOMETRIC_OPS) + tuple(PHOTOMETRIC_OPS)


@dataclass
class OpSpec:
    op: str
    p: float = 1.0
    low: float | None = None
    high: float | None = None
    classes: list[str] | None = None  # None = every class
    why: str = ""

    def __post_init__(self) -> None:
        if self.op not in KNOWN_OPS:
            raise ShiftkitError(f"unknown augmentation op {self.op!r}", None, f"use one of {', '.join(KNOWN_OPS)}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise ShiftkitError(f"op {self.op}: p must be in [0, 1], got {self.p}")
        if self.op in DEFAULT_RANGES:
            lo, hi = DEFAULT_RANGES[self.op]
            self.low = lo if self.low is None else float(self.low)
            self.high = hi if self.high is None else float(self.high)
            if self.low > self.high:
                raise ShiftkitError(f"op {self.op}: low {self.low} > high {self.high}", None, "swap them")
            if self.op == "crop" and not 0.0 < self.low <= self.high <= 1.0:
                raise ShiftkitError(f"op crop: area fractions must be in (0, 1], got [{self.low}, {self.high}]")
            if self.op in ("blur", "noise") and self.low < 0:
                raise ShiftkitError(f"op {self.op}: strength must be >= 0, got {self.low}")

    def applies_to(self, class_name: str | None) -> bool:
        return self.classes is None or class_name in self.classes

    def to_dict(self) -> dict:
        d = {"op": self.op, "p": self.p}
        if self.low is not None:
            d.update(low=self.low, high=self.high)
        if self.classes is not None:
            d["classes"] = self.classes
        if self.why:
            d["why"] = self.why
        return d


@dataclass
class Plan:
    ops: list[OpSpec]
    target_ratio: float = 1.0
    balance_classes: list[str] | None = None  # None = every class may receive new samples
    new_samples: dict[str, int] | None = None
    reasoning: list[str] = field(default_factory=list)
    balance_rule: str = "full"  # "full" | "sqrt" (see balance_counts)

    def __post_init__(self) -> None:
        if self.balance_rule not in BALANCE_RULES:
            raise ShiftkitError(f"balance rule must be one of {', '.join(BALANCE_RULES)}, got {self.balance_rule!r}")

    def to_dict(self) -> dict:
        d = {
            "version": 1,
            "ops": [o.to_dict() for o in self.ops],
            "balance": {"target_ratio": self.target_ratio, "classes": self.balance_classes, "rule": self.balance_rule},
            "reasoning": self.reasoning,
        }
        if self.new_samples is not None:
            d["new_samples"] = self.new_samples
        return d

    @classmethod
    def from_dict(cls, d: dict, source: object = "plan") -> Plan:
        if not isinstance(d, dict) or not isinstance(d.get("ops"), list) or not d["ops"]:
            raise ShiftkitError("a plan needs a non-empty 'ops' list", source, "see `shiftkit augment --help` for the format")
        try:
            ops = [OpSpec(**o) for o in d["ops"]]
        except TypeError as exc:
            raise ShiftkitError(f"bad op entry ({exc})", source, "each op has op, p, low, high, classes, why") from None
        bal = d.get("balance") or {}
        ratio = float(bal.get("target_ratio", 1.0))
        if not 0.0 < ratio <= 10.0:
            raise ShiftkitError(f"balance.target_ratio must be in (0, 10], got {ratio}", source)
        rule = bal.get("rule", "full")
        if rule not in BALANCE_RULES:
            raise ShiftkitError(f"balance.rule must be one of {', '.join(BALANCE_RULES)}, got {rule!r}", source)
        new = d.get("new_samples")
        if new is not None and (not isinstance(new, dict) or any(int(v) < 0 for v in new.values())):
            raise ShiftkitError("new_samples must map class names to counts >= 0", source)
        return cls(ops, ratio, bal.get("classes"), {k: int(v) for k, v in new.items()} if new else None,
                   list(d.get("reasoning", [])), rule)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ShiftkitError(f"cannot read plan ({exc})", path, "pass a JSON plan written by `shiftkit analyze`") from None
        return cls.from_dict(d, path)


def balance_counts(counts: dict[str, int], target_ratio: float = 1.0, classes: list[str] | None = None,
                   rule: str = "full") -> dict[str, int]:
    """New samples per class, never fewer than 0: rule `full` grows each class to
    ceil(target_ratio * largest); rule `sqrt` to ceil(target_ratio * sqrt(n * largest)), the geometric
    mean of its own count n and the largest (square-root balancing: the class ratio is halved in log).

    Only `classes` (default: all) receive new samples; a class with no images cannot be grown.
    """
    if rule not in BALANCE_RULES:
        raise ShiftkitError(f"balance rule must be one of {', '.join(BALANCE_RULES)}, got {rule!r}")
    if not counts:
        return {}
    largest = max(counts.values())
    allowed = set(counts) if classes is None else set(classes)
    unknown = allowed - set(counts)
    if unknown:
        raise ShiftkitError(f"plan names unknown classes {sorted(unknown)}", None, f"the dataset has {sorted(counts)}")

    def goal(n: int) -> int:
        # round first: 0.69 * 754 is 520.26 in floating point, 520 in exact arithmetic
        return math.ceil(round(target_ratio * (largest if rule == "full" else math.sqrt(n * largest)), 9))

    return {c: (max(0, goal(n) - n) if c in allowed and n > 0 else 0) for c, n in counts.items()}


def plan_from_ops(ops: list[str], classes: list[str] | None = None, target_ratio: float = 1.0) -> Plan:
    """A plain plan for `--balance --ops a,b,c`: each op with its default range and p = 0.5."""
    return Plan([OpSpec(o, p=0.5, classes=classes) for o in ops], target_ratio, classes,
                reasoning=[f"blind balance: ops {', '.join(ops)} at default strengths, p=0.5 each"])
