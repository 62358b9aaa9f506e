import os

import pytest

from shiftkit.data.formats.paths import list_images, normalize_relpath, safe_join, walk_files
from shiftkit.errors import UnsafePathError


@pytest.mark.parametrize("rel, want", [("a/b.png", "a/b.png"), ("./a//b.png", "a/b.png"), ("a\\b.png", "a/b.png")])
def test_normalize_relpath_cleans(rel, want):
    assert normalize_relpath(rel) == want


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "", ".", "a/.."])
def test_normalize_relpath_refuses(rel):
    with pytest.raises(UnsafePathError) as ei:
        normalize_relpath(rel, source="m.csv")
    assert "m.csv" in str(ei.value)


def test_safe_join_refuses_symlink_out(tmp_path):
    (tmp_path / "outside.png").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "outside.png", root / "link.png")
    (root / "in.png").write_bytes(b"x")
    os.symlink(root / "in.png", root / "inlink.png")
    assert safe_join(root, "inlink.png") == root.resolve() / "inlink.png"
    with pytest.raises(UnsafePathError, match="outside the dataset folder"):
        safe_join(root, "link.png")


def test_walk_files_sorted_skips_hidden_and_reports_links_out(tmp_path):
    root = tmp_path / "r"
    (root / "b").mkdir(parents=True)
    (root / "a.png").write_bytes(b"1")
    (root / "b" / "c.jpg").write_bytes(b"1")
    (root / ".hidden.png").write_bytes(b"1")
    (root / "notes.txt").write_text("x")
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "e.png").write_bytes(b"1")
    os.symlink(tmp_path / "ext", root / "linkdir")
    os.symlink(root / "b", root / "b" / "loop")  # a loop inside the root must not hang
    got = []
    assert list(walk_files(root, on_unsafe=got.append)) == ["a.png", "b/c.jpg", "notes.txt"]
    assert len(got) == 1 and "linkdir" in got[0].what
    assert list_images(root, on_unsafe=lambda e: None) == ["a.png", "b/c.jpg"]
    with pytest.raises(UnsafePathError):
        list(walk_files(root))
