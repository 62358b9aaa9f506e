"""Adaptation methods and their losses (see base.py for the Method protocol)."""

from shiftkit.adapt.base import ForwardOut, Method, Phase, StepInfo, Term, UDAMethod
from shiftkit.adapt.registry import METHODS, build_method, register

__all__ = ["ForwardOut", "METHODS", "Method", "Phase", "StepInfo", "Term", "UDAMethod", "build_method", "register"]
