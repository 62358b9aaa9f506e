"""The run folder (CONVENTIONS.md): config.json, log.jsonl, metrics.json, checkpoints/, figures/."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from shiftkit.io import _json_default, atomic_write_json


def versions() -> dict[str, str]:
    import numpy
    import torch

    import shiftkit

    out = {"shiftkit": shiftkit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import kornia

        out["kornia"] = kornia.__version__
    except Exception:
        pass
    return out


class RunFolder:
    def __init__(self, out: str | Path, enabled: bool = True):
        self.root = Path(out)
        self.enabled = enabled  # False on DDP ranks > 0: only rank 0 writes
        if enabled:
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
            (self.root / "figures").mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_json(self.root / "config.json", {**config, "versions": versions(), "argv": sys.argv})

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_json(self.root / "metrics.json", metrics)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed, so a kill loses at most the line being written)."""
        if not self.enabled:
            return
        rec = {"time": round(time.time() - self._t0, 3), **record}
        with open(self.root / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=_json_default) + "\n")
            fh.flush()


def read_log(out: str | Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return rows
