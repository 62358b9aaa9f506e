"""Errors that the CLI turns into one line on stderr and exit code 2.

Every message says what went wrong, which file, and what to do about it.
"""

from __future__ import annotations


class ShiftkitError(Exception):
    """Base class: an input or usage problem the user can fix."""

    def __init__(self, what: str, path: object | None = None, fix: str | None = None):
        self.what, self.path, self.fix = what, path, fix
        parts = [what if path is None else f"{path}: {what}"]
        if fix:
            parts.append(fix)
        super().__init__(" - ".join(parts))


class ImageError(ShiftkitError):
    """An image file cannot be decoded safely (corrupt, truncated, empty, a bomb, not an image)."""


class DatasetError(ShiftkitError):
    """A dataset's layout, labels, masks or boxes are inconsistent."""


class UnsafePathError(DatasetError):
    """A path points outside the dataset root (`..`, absolute paths, symlinks out)."""


class ResourceError(ShiftkitError):
    """A registry package, weights file or dataset resource is missing or fails verification."""
