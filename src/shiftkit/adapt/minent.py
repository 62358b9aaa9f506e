"""`minent` lives in advent.py (ADVENT's direct entropy minimisation); this module lets the registry find it by name."""

from shiftkit.adapt.advent import MinEnt, register

__all__ = ["MinEnt", "register"]
