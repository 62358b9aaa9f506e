"""`DatasetWriter`: write a dataset in a given format, atomically and resumably.

Everything goes into `OUT.partial/`; each finished sample is recorded in an append-only journal
(`OUT.partial/.shiftkit-journal.jsonl`, one JSON line per sample, flushed per sample) with the
SHA-256 of every file it produced and its target. A rerun after a kill reuses `OUT.partial`:
`is_done(path)` is True only when the journal has the sample and its files still hash the same.
On a clean exit the format's metadata (class lists, CSV manifest, COCO JSON, YOLO names) and
`shiftkit.json` (provenance, per-file hashes, the sample list; no timestamps, so an interrupted
and resumed run gives byte-identical output) are written, then `OUT.partial` is renamed to `OUT`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shiftkit import __version__
from shiftkit.data.formats.dataset import FORMAT_TASK, FORMATS, Dataset
from shiftkit.data.formats.paths import normalize_relpath
from shiftkit.data.images import encode_image, encode_mask, is_image_name
from shiftkit.data.sample import Boxes, Sample, Task
from shiftkit.errors import DatasetError, ShiftkitError
from shiftkit.io import _json_default, atomic_write_bytes, sha256_bytes, sha256_file

JOURNAL = ".shiftkit-journal.jsonl"
MANIFEST = "shiftkit.json"
# YOLO stores normalised floats; 6 decimals keep boxes within 1e-3 px for images up to 1000 px
# (error <= 0.5e-6 * size per coordinate, plus float32 rounding).
YOLO_FMT = "%.6f"


def _write_file(path: Path, data: bytes) -> None:
    """Write via a temporary name + rename: never a half file under the final name.

    No fsync per file (that would dominate the write time); the journal's hashes catch a file
    lost in a power cut, and the final metadata goes through `shiftkit.io.atomic_write_bytes`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _short_float(v: float) -> float:
    """The shortest decimal that reads back as the same float32 (10.1, not 10.100000381469727)."""
    f32 = np.float32(v)
    short = float(str(f32))
    return short if np.float32(short) == f32 else float(f32)


def _coco_bbox(xyxy: np.ndarray) -> list[float]:
    """xyxy float32 -> COCO [x, y, w, h] whose re-reading (x + w in float64 -> float32) is exact."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(xyxy, dtype=np.float32))
    out = [_short_float(x1), _short_float(y1)]
    for a, b in ((out[0], x2), (out[1], y2)):
        d = b - a
        for digits in range(1, 10):  # the shortest decimal width that reads back exactly
            cand = float(f"{d:.{digits}g}")
            if np.float32(a + cand) == np.float32(b):
                break
        else:
            cand = d
        out.append(cand)
    return out


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


class DatasetWriter:
    """Write samples as a dataset in `format` (default: `like`'s format).

    like: the dataset the samples come from (classes, format details such as the CSV name, COCO
    categories, YOLO names file, segmentation class file and ignore index). Without `like`, give
    `format` and `classes` (and `class_ids` for sparse segmentation ids).
    provenance: a JSON-able dict (command, source, target, method, seed...) kept in shiftkit.json;
    a rerun with different provenance or format starts over instead of resuming.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        like: Dataset | None = None,
        provenance: dict | None = None,
        overwrite: bool = False,
        format: str | None = None,
        *,
        classes: list[str] | None = None,
        class_ids: list[int] | None = None,
        ignore_index: int | None = None,
    ):
        if like is None and format is None:
            raise ShiftkitError("DatasetWriter needs like=<Dataset> or format=...", None, f"pass format= one of {', '.join(FORMATS)}")
        fmt = format or like.format
        if fmt not in FORMATS:
            raise ShiftkitError(f"unknown dataset format {fmt!r}", None, f"use one of {', '.join(FORMATS)}")
        self.format = fmt
        self.task = FORMAT_TASK[fmt]
        like_task = Task(getattr(like.task, "value", like.task)) if like is not None else None
        if like_task is Task.UNLABELED and self.task is not Task.UNLABELED:
            raise DatasetError(
                f"cannot write an unlabeled dataset as {fmt}", like.root, "write it as format='folder'"
            )
        if like_task is not None and self.task not in (Task.UNLABELED, like_task):
            raise DatasetError(
                f"cannot write a {like_task.value} dataset as {fmt} ({self.task.value})", like.root,
                "pick a format of the same task",
            )
        self.classes = list(classes if classes is not None else (like.classes if like is not None else []))
        if class_ids is not None:
            self.class_ids = list(class_ids)
        elif like is not None and classes is None and getattr(like, "class_ids", None) is not None:
            self.class_ids = list(like.class_ids)
        else:
            self.class_ids = list(range(len(self.classes)))
        if len(self.class_ids) != len(self.classes):
            raise ShiftkitError(f"{len(self.classes)} classes but {len(self.class_ids)} class ids", None, "give one id per class")
        if self.task in (Task.CLASSIFICATION, Task.DETECTION, Task.SEGMENTATION) and not self.classes:
            raise ShiftkitError(f"writing {fmt} needs class names", None, "pass like=<Dataset> or classes=[...]")
        like_ignore = getattr(like, "ignore_index", None)
        if self.task is not Task.SEGMENTATION:
            self.ignore_index = None
        else:
            self.ignore_index = ignore_index if ignore_index is not None else (like_ignore if like_ignore is not None else 255)
        self.info = dict(getattr(like, "info", None) or {}) if like is not None and like.format == fmt else {}
        self.provenance = dict(provenance or {})
        self.overwrite = bool(overwrite)
        self.out = Path(out).absolute()
        self.partial = self.out.with_name(self.out.name + ".partial")
        if like is not None:
            src = Path(like.root).resolve()
            dst = self.out.resolve()
            if dst == src or src.is_relative_to(dst) or dst.is_relative_to(src):
                raise DatasetError(
                    "output folder overlaps the input dataset", self.out, "choose an --out outside the input folder"
                )
        if self.out.exists() and not self.overwrite:
            raise DatasetError("exists", self.out, "use --overwrite or another --out")
        self._lock = threading.Lock()
        self._done: dict[str, dict] = {}   # out path -> journal entry, in the order of this session
        self._prior: dict[str, dict] = {}  # entries from an interrupted run, not yet re-confirmed
        self._closed = False
        self._finished = False
        self._fh = None
        self._open_journal()

    # -- journal ---------------------------------------------------------------------------
    def _header(self) -> dict:
        return {
            "kind": "header",
            "format": self.format,
            "classes": self.classes,
            "class_ids": self.class_ids,
            "ignore_index": self.ignore_index,
            "provenance": self.provenance,
        }

    def _open_journal(self) -> None:
        header = json.loads(json.dumps(self._header(), default=_json_default))
        jpath = self.partial / JOURNAL
        if jpath.is_file():
            lines = jpath.read_text(encoding="utf-8", errors="replace").splitlines()
            entries = []
            for line in lines:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by the kill
            if entries and entries[0] == header:
                for e in entries[1:]:
                    if e.get("kind") == "sample":
                        self._prior[e["path"]] = e
            else:  # another job's leftovers: start over
                shutil.rmtree(self.partial)
        elif self.partial.exists() and not self.partial.is_dir():
            raise DatasetError("exists and is not a folder", self.partial, "delete it")
        self.partial.mkdir(parents=True, exist_ok=True)
        fresh = not jpath.is_file()
        torn = not fresh and not jpath.read_bytes().endswith(b"\n")
        self._fh = open(jpath, "a", encoding="utf-8")
        if fresh:
            self._append(header)
        elif torn:  # end the torn line so the next entry starts on its own
            self._fh.write("\n")

    def _append(self, obj: dict) -> None:
        self._fh.write(json.dumps(obj, default=_json_default, separators=(",", ":")) + "\n")
        self._fh.flush()

    # -- paths -----------------------------------------------------------------------------
    def out_path(self, path: str, target: Any = None) -> str:
        """Where a sample with this relative path lands in the output (format conventions)."""
        rel = normalize_relpath(path, "DatasetWriter.write")
        if self.format in ("segmentation", "yolo") and not rel.startswith("images/"):
            rel = "images/" + rel
        if self.format == "imagefolder" and target is not None:
            cls = self.classes[int(target)]
            if rel.split("/", 1)[0] != cls:
                rel = f"{cls}/{rel}"
        return rel

    @staticmethod
    def _partner(rel: str, folder: str, suffix: str) -> str:
        stem = os.path.splitext(rel[len("images/"):])[0]
        return f"{folder}/{stem}{suffix}"

    # -- public ----------------------------------------------------------------------------
    def is_done(self, path: str) -> bool:
        """True when `path` was written by this run, or by an interrupted one and still verifies."""
        rel = self.out_path(path)
        with self._lock:
            if rel in self._done:
                return True
            e = self._prior.pop(rel, None)
        if e is None:
            return False
        for f, digest in e["files"].items():
            p = self.partial / f
            if not p.is_file() or sha256_file(p) != digest:
                return False  # rewritten by the caller
        with self._lock:
            self._done[rel] = e
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise ShiftkitError("DatasetWriter is closed", self.out, "open a new writer")

    def write(self, sample: Sample, path: str | None = None) -> str:
        """Encode and store one sample; returns its relative path in the output."""
        return self.commit(self.prepare(sample, path))

    def prepare(self, sample: Sample, path: str | None = None) -> tuple[str, dict[str, bytes], dict[str, Any]]:
        """Validate and encode one sample without touching the output (thread-safe: callers may
        encode on a thread pool, then `commit` in their own order so the journal stays deterministic)."""
        self._check_open()
        target = sample.target
        task = self.task
        if task is Task.CLASSIFICATION:
            if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < len(self.classes):
                raise ShiftkitError(
                    f"classification target must be a class id in 0..{len(self.classes) - 1}, got {target!r}",
                    sample.path, "pass a Sample whose target indexes the classes",
                )
            target = int(target)
        rel = self.out_path(path or sample.path, target if task is Task.CLASSIFICATION else None)
        suffix = os.path.splitext(rel)[1].lower()
        if not is_image_name(rel):
            raise ShiftkitError(f"output path {rel!r} has no image suffix", sample.path, "end it with .png, .jpg, ...")
        h, w = sample.height, sample.width
        files: dict[str, bytes] = {rel: encode_image(sample.image, suffix, sample.meta)}
        entry: dict[str, Any] = {"kind": "sample", "path": rel}
        if task is Task.CLASSIFICATION:
            entry["target"] = target
        elif task is Task.SEGMENTATION:
            mask = np.asarray(target) if target is not None else None
            if mask is None or mask.shape != (h, w):
                raise ShiftkitError(
                    f"segmentation target must be an HxW mask matching the {w}x{h} image, got "
                    f"{None if mask is None else mask.shape}", sample.path, "pass the mask with the image",
                )
            files[self._partner(rel, "masks", ".png")] = encode_mask(mask.astype(np.uint8), sample.meta.get("palette"))
        elif task is Task.DETECTION:
            if not isinstance(target, Boxes):
                raise ShiftkitError(f"detection target must be Boxes, got {type(target).__name__}", sample.path, "pass Boxes(xyxy, labels)")
            if len(target) and (target.labels.min() < 0 or target.labels.max() >= len(self.classes)):
                raise ShiftkitError(
                    f"box labels must be in 0..{len(self.classes) - 1}, got {sorted(set(target.labels.tolist()))}",
                    sample.path, "map labels to the class list",
                )
            entry["target"] = {"xyxy": target.xyxy.tolist(), "labels": target.labels.tolist(), "size": [w, h]}
            if self.format == "yolo":
                files[self._partner(rel, "labels", ".txt")] = self._yolo_text(target, w, h)
            elif self.format == "coco":
                if "coco_image" in sample.meta:
                    entry["coco_image"] = sample.meta["coco_image"]
                extra = sample.meta.get("coco_ann_extra")
                if extra is not None and len(extra) == len(target):
                    entry["coco_ann_extra"] = extra
        entry["files"] = {f: sha256_bytes(data) for f, data in files.items()}
        return rel, files, entry

    def commit(self, prepared: tuple[str, dict[str, bytes], dict[str, Any]]) -> str:
        """Store a `prepare`d sample (files written atomically, then its journal line); returns its path."""
        self._check_open()
        rel, files, entry = prepared
        for f, data in files.items():
            _write_file(self.partial / f, data)
        with self._lock:
            self._prior.pop(rel, None)
            self._done[rel] = entry
            self._append(entry)
        return rel

    @staticmethod
    def _yolo_text(b: Boxes, w: int, h: int) -> bytes:
        xyxy = b.xyxy.astype(np.float64)
        cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h
        bw, bh = (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h
        lines = [
            f"{int(c)} {YOLO_FMT % x} {YOLO_FMT % y} {YOLO_FMT % ww} {YOLO_FMT % hh}"
            for c, x, y, ww, hh in zip(b.labels.tolist(), cx, cy, bw, bh, strict=True)
        ]
        return ("\n".join(lines) + "\n" if lines else "").encode()

    def __len__(self) -> int:
        return len(self._done)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def abort(self) -> None:
        """Stop without finishing: OUT.partial stays for a rerun to resume."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._closed = True

    def __del__(self) -> None:
        try:
            if self._fh is not None:
                self._fh.close()
        except Exception:
            pass

    # -- finish ----------------------------------------------------------------------------
    def close(self) -> Path:
        """Write metadata + shiftkit.json and rename OUT.partial -> OUT. Returns OUT."""
        if self._finished:
            return self.out
        if self._closed:
            raise ShiftkitError("DatasetWriter was aborted", self.partial, "rerun to resume")
        self._fh.close()
        self._fh = None
        self._closed = True
        entries = list(self._done.values())
        meta_files = self._metadata(entries)
        keep_dirs = {c for c in self.classes} if self.format == "imagefolder" else set()
        for d in keep_dirs:
            (self.partial / d).mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for e in entries:
            files.update(e["files"])
        for name, data in meta_files.items():
            atomic_write_bytes(self.partial / name, data)
            files[name] = sha256_bytes(data)
        self._prune(set(files) | {MANIFEST}, keep_dirs)
        manifest = {
            "shiftkit": __version__,
            "format": self.format,
            "task": self.task.value,
            "classes": self.classes,
            **({"class_ids": self.class_ids, "ignore_index": self.ignore_index} if self.task is Task.SEGMENTATION else {}),
            "provenance": self.provenance,
            "samples": [e["path"] for e in entries],
            "files": dict(sorted(files.items())),
        }
        atomic_write_bytes(
            self.partial / MANIFEST, (json.dumps(manifest, indent=1, default=_json_default) + "\n").encode()
        )
        if self.out.exists():
            if not self.overwrite:
                raise DatasetError("exists", self.out, "use --overwrite or another --out")
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
            os.rename(self.partial, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.partial, self.out)
        self._finished = True
        return self.out

    def _prune(self, keep: set[str], keep_dirs: set[str]) -> None:
        """Delete what the journal does not account for (stale files, temp files, the journal)."""
        for dirpath, _, filenames in os.walk(self.partial, topdown=False):
            rel_dir = os.path.relpath(dirpath, self.partial).replace(os.sep, "/")
            for f in filenames:
                rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                if rel not in keep:
                    os.unlink(os.path.join(dirpath, f))
            if rel_dir != "." and rel_dir not in keep_dirs and not os.listdir(dirpath):
                os.rmdir(dirpath)

    def _classes_txt(self, ids: list[int] | None = None) -> bytes:
        ids = ids if ids is not None else list(range(len(self.classes)))
        names = dict(zip(ids, self.classes, strict=True))
        return ("\n".join(names.get(i, "") for i in range(max(ids) + 1 if ids else 0)) + "\n").encode()

    def _metadata(self, entries: list[dict]) -> dict[str, bytes]:
        fmt = self.format
        if fmt in ("imagefolder", "folder"):
            return {}
        if fmt == "csv":
            buf = io.StringIO()
            wr = csv.writer(buf, lineterminator="\n")
            wr.writerow(["path", "label"])
            used = set()
            for e in entries:
                wr.writerow([e["path"], self.classes[e["target"]]])
                used.add(e["target"])
            out = {self.info.get("manifest") or "labels.csv": buf.getvalue().encode()}
            if self.info.get("classes_file") or sorted(self.classes) != self.classes or len(used) != len(self.classes):
                out["classes.txt"] = self._classes_txt()  # keeps class ids when a class is empty or order is custom
            return out
        if fmt == "segmentation":
            cf = self.info.get("classes_file")
            dense = self.class_ids == list(range(len(self.classes)))
            if cf == "classes.json":
                if self.info.get("classes_style") == "list" and dense:
                    obj: Any = list(self.classes)
                else:
                    obj = {"classes": [{"id": i, "name": n} for i, n in zip(self.class_ids, self.classes, strict=True)], "ignore_index": self.ignore_index}
                return {"classes.json": (json.dumps(obj, indent=1) + "\n").encode()}
            if self.ignore_index == 255 and (cf == "classes.txt" or dense):
                return {"classes.txt": self._classes_txt(self.class_ids)}
            obj = {"classes": [{"id": i, "name": n} for i, n in zip(self.class_ids, self.classes, strict=True)], "ignore_index": self.ignore_index}
            return {"classes.json": (json.dumps(obj, indent=1) + "\n").encode()}
        if fmt == "yolo":
            cf = self.info.get("classes_file") or "classes.txt"
            if cf.endswith((".yaml", ".yml")):
                names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(self.classes))
                other = self.info.get("yaml_other") or ""  # the input's other keys (path, train, val...)
                head = other + "\n" if other else ""
                return {cf: f"{head}nc: {len(self.classes)}\nnames:\n{names}\n".encode()}
            return {cf: self._classes_txt()}
        if fmt == "coco":
            return {self.info.get("manifest") or "annotations.json": self._coco_json(entries)}
        raise AssertionError(fmt)

    def _coco_json(self, entries: list[dict]) -> bytes:
        prefix = self.info.get("file_prefix") or ""
        if prefix and not all(e["path"].startswith(prefix) for e in entries):
            prefix = ""
        if "category_ids" in self.info and len(self.info["category_ids"]) == len(self.classes):
            cat_ids = list(self.info["category_ids"])
            cats = [dict(c) for c in self.info["categories"]]
        else:
            cat_ids = [i + 1 for i in range(len(self.classes))]
            cats = [{"id": cid, "name": n} for cid, n in zip(cat_ids, self.classes, strict=True)]
        used: set = set()
        ids: list = []
        for e in entries:
            rid = (e.get("coco_image") or {}).get("id")
            ok = isinstance(rid, int) and not isinstance(rid, bool) and rid not in used
            ids.append(rid if ok else None)
            if ok:
                used.add(rid)
        nxt = max([i for i in used], default=0) + 1
        images, anns = [], []
        for e, iid in zip(entries, ids, strict=True):
            if iid is None:
                iid, nxt = nxt, nxt + 1
            rec = dict(e.get("coco_image") or {})
            w, h = e["target"]["size"]
            rec.update(id=iid, file_name=e["path"][len(prefix):], width=w, height=h)
            images.append(rec)
            extra = e.get("coco_ann_extra") or [{} for _ in e["target"]["labels"]]
            for xyxy, lab, ex in zip(e["target"]["xyxy"], e["target"]["labels"], extra, strict=True):
                bbox = _coco_bbox(np.asarray(xyxy, dtype=np.float32))
                ann = {"id": len(anns) + 1, "image_id": iid, "category_id": cat_ids[lab],
                       "bbox": [_num(v) for v in bbox], "area": _num(_short_float(bbox[2] * bbox[3]))}
                ann.update({k: v for k, v in ex.items() if k not in ann})
                anns.append(ann)
        top = dict(self.info.get("top") or {})
        obj = {**top, "images": images, "annotations": anns, "categories": cats}
        return (json.dumps(obj, default=_json_default) + "\n").encode()
