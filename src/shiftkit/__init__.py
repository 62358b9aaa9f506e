"""shiftkit: diagnose and fix domain shift in computer vision."""

__version__ = "0.1.0"
