"""Source-free adaptation through the one engine: a trained model + unlabeled target images, nothing else.

`adapt(model, target, ...)` runs `shiftkit.train.engine.Engine` with a target-only Method (SHOT for
classification) and no source argument at all; `method="das3"` (segmentation) runs the three DAS3
stages (`shiftkit.adapt.das3`), each a target-only Method run by the same engine in OUT/stage<k>. The engine normally learns the class names from `--source` or an
`--init` checkpoint; here they come from the model (`model.classes`, else "0".."K-1"), which is
the only change `SourceFreeEngine` makes. Model choice is label-free (information maximisation
on the target set, or the last epoch for a method whose `default_select` says so); target-test
labels, when given, only score.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.train.engine import Engine, TrainConfig

# SHOT's digit recipe (Liang et al. 2020, uda_digit.py): SGD + Nesterov, lr 0.01, wd 5e-4,
# lr_t = lr (1 + 10 p)^-0.75 ("dann" schedule, no warm-up), batch 64, one lr for all layers.
SHOT_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "schedule": "dann", "warmup_steps": 0, "head_lr_mult": 1.0, "batch_size": 64,
}
METHODS = ("shot", "das3")
NOT_YET: dict[str, str] = {}


def model_classes(model: nn.Module) -> list[str]:
    classes = getattr(model, "classes", None)
    if classes:
        return [str(c) for c in classes]
    n = getattr(model, "num_classes", None)
    if not n:
        raise ShiftkitError(f"cannot tell the classes of {type(model).__name__}", None, "set model.classes or model.num_classes")
    return [str(i) for i in range(int(n))]


class SourceFreeEngine(Engine):
    """The engine with the class list taken from the model (there is no source set to read it from)."""

    def _classes(self, init_info: dict | None) -> list[str]:
        if self._given_model is not None:
            return model_classes(self._given_model)
        return super()._classes(init_info)


def build_sourcefree_method(name: str, **options: Any):
    key = name.lower().strip()
    if key in NOT_YET:
        raise ShiftkitError(NOT_YET[key], None, f"use --method {' or '.join(METHODS)} (classification)")
    try:
        if key == "shot":
            from shiftkit.adapt.shot import Shot

            return Shot(**options)
        if key == "das3":
            from shiftkit.adapt.das3 import Das3

            return Das3(**options)
    except TypeError as exc:
        raise ShiftkitError(f"bad option for method {name}: {exc}", None, "see the method's docstring for its options") from None
    raise ShiftkitError(f"unknown source-free method {name!r}", None, f"use one of: {', '.join(METHODS)}")


def adapt(
    model: nn.Module,
    target: Any,
    *,
    method: Any = "shot",
    target_test: Any = None,
    out: str | os.PathLike = "runs/adapt",
    method_options: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Adapt `model` to the unlabeled `target` (folder or shiftkit Dataset) without source data.

    settings: any TrainConfig field (epochs, batch_size, lr, seed, device, select, resume, ...);
    SHOT's recipe (or, for das3, `shiftkit.adapt.das3.DAS3_DEFAULTS`) fills the ones not given.
    das3 writes OUT/stage1..3 (each a run folder) and OUT/metrics.json; with resume=True a rerun
    reuses finished stages and resumes an interrupted one. Returns metrics.json's figures.
    """
    for banned in ("source", "source_val", "init"):
        if settings.get(banned) is not None:
            raise ShiftkitError(f"source-free adaptation takes no {banned}", None, "give only the model and target images")
    fields = TrainConfig.__dataclass_fields__
    unknown = sorted(k for k in settings if k not in fields or k in ("target", "target_test", "out", "method"))
    if unknown:
        raise ShiftkitError(f"unknown adapt() settings: {', '.join(unknown)}", None,
                            "pass TrainConfig fields (epochs, batch_size, lr, seed, device, resume, ...)")
    m = method if not isinstance(method, str) else build_sourcefree_method(method, **(method_options or {}))
    if tuple(getattr(m, "streams", ())) != ("target",):
        raise ShiftkitError(f"method {getattr(m, 'name', m)!r} reads {getattr(m, 'streams', None)}, not only the target")
    target = os.fspath(target) if isinstance(target, os.PathLike) else target
    target_test = os.fspath(target_test) if isinstance(target_test, os.PathLike) else target_test
    from shiftkit.adapt.das3 import Das3

    if isinstance(m, Das3):
        return m.run(model, target, out=out, target_test=target_test, **settings)
    if getattr(m, "task", None) == "segmentation":  # one DAS3 stage given as a Method
        from shiftkit.adapt.das3 import DAS3_DEFAULTS

        cfg_kwargs = {**DAS3_DEFAULTS, "select": "label-free", **settings, "task": "segmentation"}
    else:
        cfg_kwargs = {**SHOT_DEFAULTS, "select": getattr(m, "default_select", "label-free"), **settings}
    cfg = TrainConfig(source=None, target=target, target_test=target_test, out=os.fspath(out), method=m.name, **cfg_kwargs)
    engine = SourceFreeEngine(cfg, model=model, method=m)
    return engine.run_training()


__all__ = ["METHODS", "NOT_YET", "SHOT_DEFAULTS", "SourceFreeEngine", "adapt", "build_sourcefree_method", "model_classes"]
