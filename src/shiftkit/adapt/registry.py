"""Method names -> Method objects. Combinations join parts with '+': `dann+mcc`, `cdan+e+mcc`,
`mcc+self-training`... At most one adversarial part (dann, cdan, cdan+e)."""

from __future__ import annotations

from typing import Any

from shiftkit.adapt.base import Method, UDAMethod
from shiftkit.errors import ShiftkitError

PARTS = ("dann", "cdan", "cdan+e", "mcc", "im", "self-training")
ADVERSARIAL = ("dann", "cdan", "cdan+e")
METHODS = ("source-only", "dann", "cdan", "cdan+e", "mcc", "self-training", "dann+mcc", "cdan+mcc", "cdan+e+mcc",
           "mcc+self-training", "cdan+e+mcc+self-training")
_EXTERNAL: dict[str, Any] = {}


def register(name: str, factory) -> None:
    """Register a Method factory (e.g. source-free SHOT): factory(**kwargs) -> Method."""
    _EXTERNAL[name] = factory


def split_parts(name: str) -> list[str]:
    tokens = [t for t in name.lower().strip().split("+")]
    parts, i = [], 0
    while i < len(tokens):
        t = tokens[i]
        if t == "cdan" and i + 1 < len(tokens) and tokens[i + 1] == "e":
            parts.append("cdan+e")
            i += 2
            continue
        parts.append(t)
        i += 1
    return parts


def build_method(name: str, label_smoothing: float = 0.0, class_weights=None, ignore_index: int | None = None,
                 **options: Any) -> Method:
    """Build a method by name. options: dann_weight, cdan_weight, mcc_weight, mcc_temperature,
    st_weight, st_tau, st_thresholds, st_floor, im_weight, disc_hidden."""
    key = name.lower().strip()
    if key not in _EXTERNAL and key.replace("-", "_").isidentifier():
        # methods living in their own module register themselves on import (e.g. adapt/shot.py)
        import importlib

        try:
            mod = importlib.import_module(f"shiftkit.adapt.{key.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shiftkit.adapt.{key.replace('-', '_')}":
                raise
        else:
            if key not in _EXTERNAL and callable(getattr(mod, "register", None)):
                mod.register()
    if key in _EXTERNAL:
        return _EXTERNAL[key](**options)
    seg = ignore_index is not None
    ii = -100 if ignore_index is None else int(ignore_index)
    if key in ("source-only", "source_only", "sourceonly", "oracle"):
        from shiftkit.adapt.source_only import SourceOnly

        return SourceOnly(label_smoothing, class_weights, ii)
    parts = split_parts(key)
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ShiftkitError(f"unknown method {name!r}", None,
                            f"use source-only or parts {', '.join(PARTS)} joined with '+' (e.g. dann+mcc)")
    if sum(p in ADVERSARIAL for p in parts) > 1:
        raise ShiftkitError(f"method {name!r} combines two adversarial parts", None, "use one of dann, cdan, cdan+e")
    if len(set(parts)) != len(parts):
        raise ShiftkitError(f"method {name!r} repeats a part")
    if seg and any(p != "im" for p in parts):
        raise ShiftkitError(f"method {name!r} is for classification", None,
                            "for segmentation use source-only, im, or a segmentation method (e.g. advent, adaptsegnet)")
    hidden = int(options.get("disc_hidden", 1024))
    terms = []
    for p in parts:
        if p == "dann":
            from shiftkit.adapt.dann import DANNTerm

            terms.append(DANNTerm(float(options.get("dann_weight", 1.0)), hidden))
        elif p in ("cdan", "cdan+e"):
            from shiftkit.adapt.cdan import CDANTerm

            terms.append(CDANTerm(p == "cdan+e", float(options.get("cdan_weight", 1.0)), hidden))
        elif p == "mcc":
            from shiftkit.adapt.mcc import MCCTerm

            terms.append(MCCTerm(float(options.get("mcc_weight", 1.0)), float(options.get("mcc_temperature", 2.5))))
        elif p == "im":
            from shiftkit.adapt.mcc import IMTerm

            terms.append(IMTerm(float(options.get("im_weight", 1.0))))
        elif p == "self-training":
            from shiftkit.adapt.self_training import SelfTrainingTerm

            terms.append(SelfTrainingTerm(float(options.get("st_weight", 1.0)), float(options.get("st_tau", 0.95)),
                                          str(options.get("st_thresholds", "flexmatch")), float(options.get("st_floor", 0.8))))
    return UDAMethod(terms, "+".join(parts), label_smoothing, class_weights, ignore_index=ii)
