"""Safe paths: every file a dataset names must resolve inside the dataset root.

Manifests (CSV, COCO, YOLO lists) are user input; a `../../etc/passwd` or an absolute path in
one, or a symlink pointing out of the folder, must never make shiftkit read or write elsewhere.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

from shiftkit.data.images import is_image_name
from shiftkit.errors import UnsafePathError

# Files kept at a dataset's root that are never data: shiftkit's provenance, and the usual
# documentation files (benchmark builders write a README saying where the data came from), and
# the pairing record `shiftkit transfer` writes (which target styled which source).
RESERVED_NAMES = ("shiftkit.json", "pairs.csv", "README", "README.md", "README.txt", "LICENSE", "LICENSE.txt")


def normalize_relpath(rel: str, source: object = None) -> str:
    """Return `rel` as a clean POSIX path relative to a dataset root, or raise UnsafePathError.

    Absolute paths, drive letters and any `..` component are refused; `source` names the manifest
    that held the path so the error says which file to fix.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise UnsafePathError(f"empty path {rel!r}", source, "give a path relative to the dataset folder")
    s = rel.replace("\\", "/")
    if s.startswith("/") or (len(s) > 1 and s[1] == ":"):
        raise UnsafePathError(
            f"absolute path {rel!r} is not allowed", source, "write paths relative to the dataset folder"
        )
    parts = [p for p in s.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(
            f"path {rel!r} leaves the dataset folder ('..')", source, "write paths relative to the dataset folder, without '..'"
        )
    if not parts:
        raise UnsafePathError(f"empty path {rel!r}", source, "give a path relative to the dataset folder")
    return posixpath.join(*parts)


def is_inside(root: Path, path: Path) -> bool:
    """True when the fully resolved `path` is `root` or below it (root must be resolved)."""
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def safe_join(root: str | os.PathLike, rel: str, source: object = None) -> Path:
    """`root / rel` after checking that `rel` is clean and that symlinks do not lead out of `root`."""
    root = Path(root).resolve()
    clean = normalize_relpath(rel, source)
    full = root / clean
    if not is_inside(root, full):
        raise UnsafePathError(
            f"{clean!r} resolves outside the dataset folder (symlink to {full.resolve()})",
            source if source is not None else full,
            "copy the file into the dataset folder instead of linking to it",
        )
    return full


def walk_files(root: Path, on_unsafe=None) -> Iterator[str]:
    """Yield every regular file below `root` as a sorted relative POSIX path.

    Hidden files/folders (name starting with '.') are skipped. Symlinks are followed only when
    they stay inside `root`; one that leads out calls `on_unsafe(UnsafePathError)` (default:
    raise it). Directory loops are cut by remembering resolved folders.
    """
    root = Path(root).resolve()
    seen: set[str] = set()

    def unsafe(rel: str, target: str) -> None:
        err = UnsafePathError(
            f"symlink {rel!r} points outside the dataset folder (to {target})",
            root / rel,
            "copy the file into the dataset folder instead of linking to it",
        )
        if on_unsafe is None:
            raise err
        on_unsafe(err)

    def rec(dir_path: Path, prefix: str) -> Iterator[str]:
        real = os.path.realpath(dir_path)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(dir_path) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for e in items:
            if e.name.startswith("."):
                continue
            rel = f"{prefix}{e.name}"
            full = Path(e.path)
            if e.is_symlink():
                target = os.path.realpath(full)
                if not is_inside(root, Path(target)):
                    unsafe(rel, target)
                    continue
            try:
                if e.is_dir(follow_symlinks=True):
                    yield from rec(full, rel + "/")
                elif e.is_file(follow_symlinks=True):
                    yield rel
            except OSError:
                continue

    yield from rec(root, "")


def list_images(root: Path, on_unsafe=None) -> list[str]:
    """Sorted relative paths of the image files (by suffix) below `root`."""
    return [p for p in walk_files(root, on_unsafe) if is_image_name(p)]
