"""From a diagnosis to an augmentation plan a person can read: ops, strengths, classes, counts, why.

The rule follows the solar-cell case: augment only the classes that fail (and are outnumbered),
only along the properties where their recall collapses, in the ranges where it collapses, and
add new samples until those classes are balanced (`balance="full"`, the article's rule) or half
way in log-odds (`balance="sqrt"`, square-root balancing). Declared symmetries are checked against
the training images first (`orientation`, see analysis.symmetry): one that moves images off the
data's distribution is dropped. Blind augmentation of everything is what the plan is meant to beat.
"""

from __future__ import annotations

import numpy as np

from shiftkit.analysis.sensitivity import Sensitivity
from shiftkit.analysis.symmetry import check_symmetries
from shiftkit.augment.policy import BALANCE_RULES, OpSpec, Plan, balance_counts

SYMMETRIES = ("hflip", "vflip", "rot90")


def _median(table, name: str, rows: np.ndarray | None = None) -> float:
    v = table[name] if rows is None else table[name][rows]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def op_for_range(prop: str, low: float, high: float, median: float, why: str, classes: list[str] | None) -> OpSpec | None:
    """The label-preserving op that produces images whose `prop` lies in [low, high], or None."""
    if prop == "brightness":
        return OpSpec("brightness_to", p=0.7, low=max(0.0, low), high=min(1.0, high), classes=classes, why=why)
    if not np.isfinite(median) or median <= 0:
        return None
    ratio_lo, ratio_hi = low / median, high / median
    if prop == "contrast":
        return OpSpec("contrast", p=0.7, low=float(np.clip(ratio_lo, 0.3, 3.0)), high=float(np.clip(ratio_hi, 0.3, 3.0)), classes=classes, why=why)
    if prop in ("saturation", "colourfulness"):
        return OpSpec("saturation", p=0.7, low=float(np.clip(ratio_lo, 0.0, 3.0)), high=float(np.clip(ratio_hi, 0.0, 3.0)), classes=classes, why=why)
    if prop == "sharpness":
        if high <= median:  # fails on blurry images -> make blurry ones
            return OpSpec("blur", p=0.7, low=0.6, high=2.0, classes=classes, why=why)
        return OpSpec("sharpen", p=0.7, low=1.5, high=3.0, classes=classes, why=why)
    if prop == "noise":
        if low >= median:  # fails on noisy images -> add noise of that level
            return OpSpec("noise", p=0.7, low=float(min(low, 0.2)), high=float(min(max(high, low), 0.25)), classes=classes, why=why)
        return OpSpec("blur", p=0.7, low=0.3, high=0.8, classes=classes, why=why)
    return None


def recommend_plan(
    sens: Sensitivity,
    table,
    symmetries: tuple[str, ...] = ("hflip",),
    target_table=None,
    drift_rows: list[dict] | None = None,
    max_ops_per_class: int = 3,
    ks_threshold: float = 0.2,
    balance: str = "full",
    orientation: np.ndarray | None = None,
) -> Plan:
    """Write the plan. `table` holds the training data's properties (for medians); `drift_rows` from
    `analysis.drift.property_drift(source, target)` add ops that move the source toward the target.
    `balance`: "full" (minority classes grow to the largest) or "sqrt" (to the geometric mean of
    their count and the largest). `orientation`: the training images' orientation log ratios
    (the property table's `orientation` column); when given, rot90 is kept only if the data has no
    preferred orientation (`analysis.symmetry.check_symmetries`)."""
    if balance not in BALANCE_RULES:
        raise ValueError(f"unknown balance rule {balance!r}; use {', '.join(BALANCE_RULES)}")
    for sym in symmetries:
        if sym not in SYMMETRIES:
            raise ValueError(f"unknown symmetry {sym!r}; use {', '.join(SYMMETRIES)}")
    symmetries, sym_reasoning = check_symmetries(symmetries, orientation, ks_threshold)
    counts = sens.class_counts
    largest = max(counts.values()) if counts else 0
    weak = [c for c, r in sens.recall.items() if np.isfinite(r) and r < sens.overall_accuracy]
    minority = [c for c, n in counts.items() if 0 < n < largest]
    targeted = sorted(set(weak) | set(minority), key=lambda c: sens.recall.get(c, 1.0))
    reasoning = [
        f"overall accuracy {sens.overall_accuracy:.3f}; recall per class: "
        + ", ".join(f"{c} {r:.3f} (n={counts[c]})" for c, r in sens.recall.items()),
    ]
    if sens.imbalance_ratio > 1:
        reasoning.append(f"class imbalance ratio {sens.imbalance_ratio:.2f} (largest / smallest)")
    ops: list[OpSpec] = []
    for cls in targeted:
        drops = [s for s in sens.slices if s.cls == cls and s.significant]
        by_prop: dict[str, list] = {}
        for s in drops:
            by_prop.setdefault(s.property, []).append(s)
        ranked = sorted(by_prop.items(), key=lambda kv: min(s.rate - s.overall for s in kv[1]))
        added = 0
        for prop, slices in ranked:
            if added >= max_ops_per_class:
                break
            low, high = min(s.low for s in slices), max(s.high for s in slices)
            worst = min(slices, key=lambda s: s.rate)
            why = (f"{cls} recall falls to {worst.rate:.2f} (95% CI {worst.ci_low:.2f}-{worst.ci_high:.2f}, n={worst.n}) "
                   f"for {prop} in [{worst.low:.4g}, {worst.high:.4g}] vs {worst.overall:.2f} overall")
            op = op_for_range(prop, low, high, _median(table, prop), why, [cls])
            if op is None:
                reasoning.append(f"{why}; no label-preserving op sets {prop}, so it is reported only")
                continue
            ops.append(op)
            reasoning.append(f"{why} -> {op.op} in [{op.low:.4g}, {op.high:.4g}] for {cls}")
            added += 1
        if not by_prop:
            reasoning.append(f"{cls}: no property bucket shows a significant recall drop (CI upper bound below overall)")
    if drift_rows and target_table is not None:
        for row in drift_rows:
            prop = row["property"]
            if row["ks"] < ks_threshold or any(o.why.startswith("target drift") and prop in o.why for o in ops):
                continue
            tv = target_table[prop]
            tv = tv[np.isfinite(tv)]
            if tv.size == 0:
                continue
            low, high = (float(q) for q in np.quantile(tv, [0.1, 0.9]))
            why = (f"target drift on {prop}: KS {row['ks']:.2f}, source median {row['median_a']:.4g} vs target "
                   f"{row['median_b']:.4g}; move training images into the target's 10-90% range")
            op = op_for_range(prop, low, high, row["median_a"], why, None)
            if op is not None:
                op.p = 0.5
                ops.append(op)
                reasoning.append(f"{why} -> {op.op} in [{op.low:.4g}, {op.high:.4g}] for every class")
    reasoning += sym_reasoning
    for sym in symmetries:
        ops.append(OpSpec(sym, p=0.5, classes=targeted or None, why="declared label-preserving symmetry"))
    if not ops:
        ops.append(OpSpec("hflip", p=0.5, why="no diagnosis-driven op found; mild default"))
    balance_classes = [c for c in targeted if c in minority] or None
    new = balance_counts(counts, 1.0, balance_classes, balance) if balance_classes else {c: 0 for c in counts}
    if balance_classes:
        goal = ("to match the largest class" if balance == "full" else
                "to the geometric mean of each count and the largest class (square-root balancing: the class "
                "ratio halved in log-odds, so the model's prior moves half way to 1:1)")
        reasoning.append("balance: " + ", ".join(f"{c} +{n}" for c, n in new.items() if n) + f" new samples {goal}")
    return Plan(ops, 1.0, balance_classes, new, reasoning, balance)
