"""Format detection and one index builder per format (no pixel decoding here).

Each builder takes a `report(code, path, what, fix, fatal=True, cls=DatasetError)` callback:
`open_dataset` raises on fatal problems and ignores the rest; `validate` collects everything and
keeps going, so one reader serves both.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit.data.formats.dataset import FORMAT_TASK, Dataset, Entry
from shiftkit.data.formats.paths import RESERVED_NAMES, list_images, normalize_relpath, safe_join, walk_files
from shiftkit.data.images import MAX_PIXELS, is_image_name
from shiftkit.data.sample import Boxes, Task
from shiftkit.errors import DatasetError, ShiftkitError, UnsafePathError

Report = Callable[..., None]
CLASSES_TXT = "classes.txt"
CLASSES_JSON = "classes.json"


def strict_report(code: str, path: object, what: str, fix: str, fatal: bool = True, cls=DatasetError) -> None:
    """The `open_dataset` policy: fatal problems raise, the others (stray files...) are ignored."""
    if fatal:
        raise cls(what, path, fix)


def _unsafe_sink(report: Report) -> Callable[[UnsafePathError], None]:
    return lambda err: report("unsafe-path", err.path, err.what, err.fix, True, UnsafePathError)


def _safe_entry(root: Path, rel: str, source: object, report: Report) -> str | None:
    """Normalise a manifest path and check it stays inside root; None when refused (lenient)."""
    try:
        clean = normalize_relpath(rel, source)
        full = safe_join(root, clean, source)
    except UnsafePathError as err:
        report("unsafe-path", err.path, err.what, err.fix, True, UnsafePathError)
        return None
    if not full.is_file():
        report("missing-file", source, f"lists {clean!r}, which does not exist", "fix the path or remove the entry")
        return None
    return clean


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------
def _csv_header(path: Path) -> list[str] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return [c.strip().lower() for c in row] if row else None


def _is_manifest_csv(path: Path) -> bool:
    h = _csv_header(path)
    return bool(h) and "path" in h and "label" in h


_JSON_CACHE: dict = {}


def _load_json(path: Path) -> Any:
    """Parse a JSON file; the last one parsed is kept so detection + reading parse a COCO file once."""
    try:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
        if key in _JSON_CACHE:
            return _JSON_CACHE[key]
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path, "fix or re-export the file") from None
    _JSON_CACHE.clear()
    _JSON_CACHE[key] = obj
    return obj


def _coco_candidates(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.glob("*.json")):
        if p.name in RESERVED_NAMES or p.name == CLASSES_JSON or p.name.startswith("."):
            continue
        try:
            with open(p, encoding="utf-8") as fh:
                head = fh.read(1 << 20)
        except (OSError, UnicodeDecodeError):
            continue
        if '"annotations"' in head or len(head) == (1 << 20):
            try:
                obj = _load_json(p)
            except DatasetError:
                continue
            if isinstance(obj, dict) and "annotations" in obj and "images" in obj:
                out.append(p)
    return out


def detect_format(path: str | os.PathLike) -> tuple[str, Path, Path | None]:
    """Return (format, root, manifest file or None) for a dataset path; see the module doc."""
    p = Path(path)
    if not p.exists():
        raise DatasetError("does not exist", p, "check the path")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            if not _is_manifest_csv(p):
                raise DatasetError("CSV without a 'path,label' header", p, "add the header line path,label")
            return "csv", p.parent.resolve(), p.resolve()
        if p.suffix.lower() == ".json":
            obj = _load_json(p)
            if not (isinstance(obj, dict) and "images" in obj and "annotations" in obj):
                raise DatasetError("JSON is not COCO (no 'images'/'annotations')", p, "pass a COCO annotation file")
            return "coco", p.parent.resolve(), p.resolve()
        raise DatasetError(
            "not a dataset: expected a folder, a .csv manifest or a COCO .json", p, "pass the dataset folder"
        )
    root = p.resolve()
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "segmentation", root, None
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo", root, None
    cocos = _coco_candidates(root)
    if len(cocos) > 1:
        raise DatasetError(
            f"several COCO files ({', '.join(c.name for c in cocos)})", root, "pass the .json file to use"
        )
    if cocos:
        return "coco", root, cocos[0]
    csvs = [c for c in sorted(root.glob("*.csv")) if _is_manifest_csv(c)]
    if len(csvs) > 1:
        raise DatasetError(f"several CSV manifests ({', '.join(c.name for c in csvs)})", root, "pass the .csv file to use")
    if csvs:
        return "csv", root, csvs[0]
    images = list_images(root, on_unsafe=lambda err: None)
    if not images:
        raise DatasetError("no images found", root, "point at a folder holding images (png/jpg/...) or a manifest")
    if any("/" not in p for p in images):
        return "folder", root, None
    return "imagefolder", root, None


# ---------------------------------------------------------------------------------------------
# class lists
# ---------------------------------------------------------------------------------------------
def read_classes_txt(path: Path) -> tuple[list[str], list[int]]:
    """One name per line, id = line number (0-based); blank lines leave an id unused."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names, ids = [], []
    for i, line in enumerate(lines):
        if line.strip():
            names.append(line.strip())
            ids.append(i)
    return names, ids


def read_classes_json(path: Path) -> tuple[list[str], list[int], int | None, str]:
    """A list of names, or {"classes": [names] | [{"id", "name"}], "ignore_index": 255}."""
    obj = _load_json(path)
    style = "list"
    ignore = 255
    if isinstance(obj, dict):
        style = "dict"
        ignore = obj.get("ignore_index", 255)
        obj = obj.get("classes")
    if not isinstance(obj, list):
        raise DatasetError("classes.json must be a list of names or {'classes': [...]}", path, "see docs/ARCHITECTURE.md")
    names, ids = [], []
    for i, c in enumerate(obj):
        if isinstance(c, str):
            names.append(c), ids.append(i)
        elif isinstance(c, dict) and "name" in c and isinstance(c.get("id", i), int):
            names.append(str(c["name"])), ids.append(int(c.get("id", i)))
        else:
            raise DatasetError(f"bad class entry {c!r}", path, "use a name or {'id': int, 'name': str}")
    if len(set(ids)) != len(ids):
        raise DatasetError("class ids repeat", path, "give each class a distinct id")
    order = np.argsort(ids, kind="stable")
    return [names[i] for i in order], [ids[i] for i in order], ignore, style


_YAML_KEY = re.compile(r"^(\w+)\s*:\s*(.*)$")


def _yaml_scalar(s: str) -> str:
    s = s.split(" #")[0].strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def read_yaml_names(path: Path) -> list[str] | None:
    """`names:` from a YOLO data.yaml, parsed by hand: `[a, b]`, a `- a` list or a `0: a` mapping."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    for i, line in enumerate(lines):
        m = _YAML_KEY.match(line)
        if not m or m.group(1) != "names":
            continue
        rest = m.group(2).split(" #")[0].strip()
        if rest.startswith("["):
            body = rest
            j = i
            while "]" not in body and j + 1 < len(lines):
                j += 1
                body += " " + lines[j].strip()
            inner = body[1 : body.index("]")]
            return [_yaml_scalar(x) for x in inner.split(",") if x.strip()]
        if rest.startswith("{"):
            inner = rest.strip("{}")
            pairs = [x.split(":", 1) for x in inner.split(",") if ":" in x]
            return [_yaml_scalar(v) for k, v in sorted(pairs, key=lambda kv: int(kv[0]))]
        items: dict[int, str] = {}
        seq: list[str] = []
        for sub in lines[i + 1 :]:
            if not sub.strip() or sub.lstrip().startswith("#"):
                continue
            if not sub[0].isspace():
                break
            s = sub.strip()
            if s.startswith("- "):
                seq.append(_yaml_scalar(s[2:]))
            elif ":" in s:
                k, v = s.split(":", 1)
                if k.strip().isdigit():
                    items[int(k.strip())] = _yaml_scalar(v)
        if seq:
            return seq
        if items:
            return [items[k] for k in sorted(items)]
        return []
    return None


def yaml_without_names(text: str) -> str:
    """data.yaml minus its `names:` (with its indented block) and `nc:` lines, for writers to keep."""
    out, skipping = [], False
    for line in text.splitlines():
        m = _YAML_KEY.match(line)
        if m:
            skipping = m.group(1) == "names"
            if skipping or m.group(1) == "nc":
                continue
        elif skipping and (not line.strip() or line[0].isspace()):
            continue
        else:
            skipping = False
        out.append(line)
    return "\n".join(out).strip("\n")


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def _read_imagefolder(root: Path, report: Report, **_) -> dict:
    classes = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not d.name.endswith(".partial")
    )
    index = {c: i for i, c in enumerate(classes)}
    entries = []
    for rel in walk_files(root, _unsafe_sink(report)):
        if "/" not in rel:
            if is_image_name(rel):
                report("stray-file", root / rel, "image outside any class folder", "move it into a class folder", True)
            continue
        if not is_image_name(rel):
            report("stray-file", root / rel, "non-image file in a class folder", "delete it or move it out of the dataset", False)
            continue
        cls = rel.split("/", 1)[0]
        if cls not in index:
            continue
        entries.append(Entry(rel, index[cls]))
    if not classes:
        report("no-images", root, "no class folders", "put images in ROOT/<class>/", True)
    return {"entries": entries, "classes": classes}


def _read_csv(root: Path, report: Report, manifest: Path, **_) -> dict:
    classes_file = manifest.parent / CLASSES_TXT
    declared = read_classes_txt(classes_file)[0] if classes_file.is_file() else None
    rows: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [c.strip().lower() for c in next(reader, [])]
        ip, il = header.index("path"), header.index("label")
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{manifest}:{lineno}"
            if len(row) <= max(ip, il):
                report("bad-annotation", where, f"row has {len(row)} fields", "write path,label on every row")
                continue
            rel, label = row[ip].strip(), row[il].strip()
            if not label:
                report("bad-annotation", where, f"no label for {rel!r}", "give every row a class name")
                continue
            if declared is not None and label not in declared:
                report("unknown-class", where, f"unknown class {label!r} (not in {CLASSES_TXT})",
                       f"add it to {classes_file} or fix the label")
                continue
            clean = _safe_entry(root, rel, where, report)
            if clean is None:
                continue
            if clean in seen:
                report("duplicate-entry", where, f"{clean!r} is listed twice", "keep one row per image")
                continue
            seen[clean] = label
            rows.append((clean, label))
    if not rows and declared is None:
        report("no-images", manifest, "manifest lists no images", "add rows path,label")
    classes = declared if declared is not None else sorted({lab for _, lab in rows})
    index = {c: i for i, c in enumerate(classes)}
    entries = [Entry(p, index[lab]) for p, lab in rows]
    return {"entries": entries, "classes": classes,
            "info": {"manifest": manifest.name, "classes_file": CLASSES_TXT if declared is not None else None}}


def _read_folder(root: Path, report: Report, **_) -> dict:
    entries = []
    for rel in walk_files(root, _unsafe_sink(report)):
        if is_image_name(rel):
            entries.append(Entry(rel))
        elif rel not in RESERVED_NAMES:
            report("stray-file", root / rel, "non-image file", "delete it or move it out of the dataset", False)
    return {"entries": entries, "classes": []}


def _paired(root: Path, sub: str, suffix: str, report: Report, what: str) -> tuple[list[str], dict[str, str]]:
    """Images below root/images and their partner files (masks/labels) keyed by stem path."""
    images, stray = [], []
    for rel in walk_files(root / "images", _unsafe_sink(report)):
        (images if is_image_name(rel) else stray).append(rel)
    for rel in stray:
        report("stray-file", root / "images" / rel, "non-image file in images/", "delete it or move it out", False)
    partners: dict[str, str] = {}
    if (root / sub).is_dir():
        for rel in walk_files(root / sub, _unsafe_sink(report)):
            stem, ext = os.path.splitext(rel)
            if rel == CLASSES_TXT:
                continue
            if ext.lower() == suffix:
                partners[stem] = f"{sub}/{rel}"
            else:
                report("stray-file", root / sub / rel, f"not a {what} ({suffix}) file", "delete it or move it out", False)
    return images, partners


def _check_stems(root: Path, images: list[str], report: Report) -> list[str]:
    by_stem: dict[str, str] = {}
    keep = []
    for rel in images:
        stem = os.path.splitext(rel)[0]
        if stem in by_stem:
            report("ambiguous-stem", root / "images" / rel, f"same name as {by_stem[stem]} with another suffix",
                   "rename one of them: masks/labels are matched by name")
            continue
        by_stem[stem] = rel
        keep.append(rel)
    return keep


def _read_segmentation(root: Path, report: Report, **_) -> dict:
    info: dict = {}
    if (root / CLASSES_JSON).is_file():
        classes, class_ids, ignore, style = read_classes_json(root / CLASSES_JSON)
        info.update(classes_file=CLASSES_JSON, classes_style=style)
    elif (root / CLASSES_TXT).is_file():
        classes, class_ids = read_classes_txt(root / CLASSES_TXT)
        ignore = 255
        info.update(classes_file=CLASSES_TXT)
    else:
        report("no-classes-file", root, "segmentation dataset without classes.txt or classes.json",
               "add classes.txt (one class name per line, id = line number)")
        classes, class_ids, ignore = [], [], 255
        info.update(classes_file=None)
    images, masks = _paired(root, "masks", ".png", report, "mask")
    images = _check_stems(root, images, report)
    entries = []
    used = set()
    for rel in images:
        stem = os.path.splitext(rel)[0]
        m = masks.get(stem)
        if m is None:
            report("mask-missing", root / "images" / rel, f"no mask masks/{stem}.png",
                   "add the mask or remove the image")
            continue
        used.add(stem)
        entries.append(Entry(f"images/{rel}", mask=m))
    for stem, m in masks.items():
        if stem not in used and not any(os.path.splitext(r)[0] == stem for r in images):
            report("orphan-file", root / m, "mask without an image", "add images/<same name> or delete the mask", False)
    if not images:
        report("no-images", root / "images", "no images", "put images in images/ and masks in masks/")
    return {"entries": entries, "classes": classes, "class_ids": class_ids, "ignore_index": ignore, "info": info}


def _read_yolo(root: Path, report: Report, **_) -> dict:
    info: dict = {}
    names = None
    for cand in (root / CLASSES_TXT, root / "labels" / CLASSES_TXT):
        if cand.is_file():
            n, ids = read_classes_txt(cand)
            if ids != list(range(len(n))):
                report("bad-annotation", cand, "blank lines in a YOLO classes.txt", "one name per line, no gaps")
            names = n
            info["classes_file"] = str(cand.relative_to(root).as_posix())
            break
    if names is None:
        for cand in (root / "data.yaml", root / "data.yml", root / "dataset.yaml"):
            if cand.is_file():
                names = read_yaml_names(cand)
                if names is not None:
                    info["classes_file"] = cand.name
                    info["yaml_other"] = yaml_without_names(cand.read_text(encoding="utf-8-sig"))
                    break
    images, labels = _paired(root, "labels", ".txt", report, "YOLO label")
    images = _check_stems(root, images, report)
    entries = []
    max_cls = -1
    parsed: list[tuple[str, np.ndarray]] = []
    for rel in images:
        stem = os.path.splitext(rel)[0]
        lab = labels.get(stem)
        rows = []
        if lab is not None:
            for lineno, line in enumerate((root / lab).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                toks = line.split()
                if not toks:
                    continue
                where = f"{root / lab}:{lineno}"
                try:
                    if len(toks) != 5:
                        raise ValueError(f"{len(toks)} fields")
                    c = int(toks[0])
                    vals = [float(t) for t in toks[1:]]
                    if c < 0 or not all(np.isfinite(vals)):
                        raise ValueError("negative class or non-finite value")
                except ValueError as exc:
                    report("bad-annotation", where, f"bad YOLO line {line.strip()!r} ({exc})", "write 'class cx cy w h', normalised to 0..1")
                    continue
                rows.append([c, *vals])
                max_cls = max(max_cls, c)
        parsed.append((f"images/{rel}", np.asarray(rows, dtype=np.float64).reshape(-1, 5)))
    if names is None:
        report("no-classes-file", root, "YOLO dataset without classes.txt or data.yaml names:",
               "add classes.txt (one class name per line)", False)
        names = [str(i) for i in range(max_cls + 1)]
        info["classes_file"] = None
    nc = len(names)
    for path, arr in parsed:
        bad = arr[:, 0] >= nc
        if bad.any():
            report("bad-label", root / "labels" / (os.path.splitext(path[len("images/"):])[0] + ".txt"),
                   f"class ids {sorted(set(arr[bad, 0].astype(int).tolist()))} but only {nc} classes",
                   "fix the class ids or add the names to classes.txt")
            arr = arr[~bad]
        entries.append(Entry(path, arr))
    image_stems = {os.path.splitext(r)[0] for r in images}
    for stem, lab in labels.items():
        if stem not in image_stems:
            report("orphan-file", root / lab, "label file without an image", "add the image or delete the label", False)
    if not images:
        report("no-images", root / "images", "no images", "put images in images/ and labels in labels/")
    return {"entries": entries, "classes": names, "info": info}


_COCO_ANN_KNOWN = ("id", "image_id", "category_id", "bbox", "area")


def _read_coco(root: Path, report: Report, manifest: Path, **_) -> dict:
    obj = _load_json(manifest)
    _JSON_CACHE.clear()  # parsed once for detection + reading; do not keep a big file alive
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list) or not isinstance(obj.get("annotations"), list):
        raise DatasetError("COCO file needs 'images' and 'annotations' lists", manifest, "re-export it as COCO JSON")
    cats = obj.get("categories") or []
    try:
        cats = sorted(cats, key=lambda c: int(c["id"]))
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise DatasetError("every category needs an integer 'id'", manifest, "fix 'categories'") from None
    if len(set(cat_ids)) != len(cat_ids):
        raise DatasetError("category ids repeat", manifest, "give each category a distinct id")
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}
    # file_name is relative to the json's folder, or to images/ next to it (decided once, by the first image that exists)
    prefix = None
    images: dict[Any, dict] = {}
    order: list[Any] = []
    paths: dict[Any, str] = {}
    for k, rec in enumerate(obj["images"]):
        where = f"{manifest}:images[{k}]"
        if not isinstance(rec, dict) or "id" not in rec or "file_name" not in rec:
            report("bad-annotation", where, "image record without 'id' or 'file_name'", "fix the COCO file")
            continue
        if rec["id"] in images:
            report("bad-annotation", where, f"image id {rec['id']!r} repeats", "give each image a distinct id")
            continue
        try:
            fn = normalize_relpath(str(rec["file_name"]), where)
        except UnsafePathError as err:
            report("unsafe-path", err.path, err.what, err.fix, True, UnsafePathError)
            continue
        if prefix is None:  # decided by the first image found in either place
            if (root / fn).exists():
                prefix = ""
            elif (root / "images" / fn).exists():
                prefix = "images/"
        clean = _safe_entry(root, (prefix or "") + fn, where, report)
        if clean is None:
            continue
        images[rec["id"]] = rec
        paths[rec["id"]] = clean
        order.append(rec["id"])
    boxes: dict[Any, list] = {i: [] for i in order}
    all_ids = {r.get("id") for r in obj["images"] if isinstance(r, dict)}
    for k, ann in enumerate(obj["annotations"]):
        where = f"{manifest}:annotations[{k}]"
        if not isinstance(ann, dict):
            report("bad-annotation", where, "annotation is not an object", "fix the COCO file")
            continue
        iid = ann.get("image_id")
        if iid not in boxes:
            if iid not in all_ids:
                report("bad-annotation", where, f"image_id {iid!r} is not in 'images'", "fix or drop the annotation")
            continue
        cid = ann.get("category_id")
        if cid not in cat_index:
            report("bad-label", where, f"category_id {cid!r} is not in 'categories'", "add the category or fix the id")
            continue
        bb = ann.get("bbox")
        if not (isinstance(bb, (list, tuple)) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)):
            report("bad-annotation", where, f"bbox {bb!r} is not [x, y, w, h]", "fix the bbox")
            continue
        extra = {k2: v for k2, v in ann.items() if k2 not in _COCO_ANN_KNOWN and not isinstance(v, (list, dict))}
        boxes[iid].append((bb, cat_index[cid], extra))
    entries = []
    for iid in order:
        items = boxes[iid]
        xywh = np.asarray([b for b, _, _ in items], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        labels = np.asarray([c for _, c, _ in items], dtype=np.int64)
        extra = {"coco_image": images[iid], "coco_ann_extra": [e for _, _, e in items]}
        entries.append(Entry(paths[iid], Boxes(xyxy, labels), extra=extra))
    if not entries:
        report("no-images", manifest, "COCO file lists no readable images", "check 'images' and the image folder")
    top = {k: v for k, v in obj.items() if k not in ("images", "annotations", "categories")}
    info = {"manifest": manifest.name, "file_prefix": prefix or "", "category_ids": cat_ids, "categories": cats, "top": top}
    return {"entries": entries, "classes": names, "info": info}


READERS = {
    "imagefolder": _read_imagefolder,
    "csv": _read_csv,
    "folder": _read_folder,
    "segmentation": _read_segmentation,
    "yolo": _read_yolo,
    "coco": _read_coco,
}


def build_dataset(
    path: str | os.PathLike,
    task: Task | str | None = None,
    max_pixels: int = MAX_PIXELS,
    report: Report = strict_report,
) -> Dataset:
    fmt, root, manifest = detect_format(path)
    want = Task(task) if task is not None else None
    if want is not None and want is not Task.UNLABELED and want is not FORMAT_TASK[fmt]:
        raise DatasetError(
            f"this is a {fmt} dataset ({FORMAT_TASK[fmt].value}); it cannot be read as {want.value}",
            path,
            f"drop --task or use --task {FORMAT_TASK[fmt].value} (or unlabeled)",
        )
    if int(max_pixels) <= 0:
        raise ShiftkitError(f"max_pixels must be positive, got {max_pixels}", None, "pass a pixel count such as 100000000")
    got = READERS[fmt](root, report, manifest=manifest)
    entries = got["entries"]
    if want is Task.UNLABELED and fmt != "folder":
        return Dataset(root, "folder", Task.UNLABELED, [Entry(e.path) for e in entries],
                       info={"read_as": fmt}, max_pixels=max_pixels)
    return Dataset(
        root,
        fmt,
        FORMAT_TASK[fmt],
        entries,
        classes=got.get("classes"),
        class_ids=got.get("class_ids"),
        ignore_index=got.get("ignore_index") if fmt == "segmentation" else None,
        info=got.get("info"),
        max_pixels=max_pixels,
    )


def open_dataset(path: str | os.PathLike, task: Task | str | None = None, max_pixels: int = MAX_PIXELS) -> Dataset:
    """Open a dataset folder or manifest; format detected, task inferred unless given.

    Raises DatasetError (layout, labels), UnsafePathError (paths leaving the root). Nothing is
    decoded here; `max_pixels` is the decompression-bomb limit used when samples are decoded.
    """
    return build_dataset(path, task, max_pixels, strict_report)
