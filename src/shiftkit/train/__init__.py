"""Training: the one engine (fit), evaluation and prediction; mirrors `shiftkit train/evaluate/predict`."""

from __future__ import annotations

from typing import Any


def fit(*args: Any, **kwargs: Any) -> dict:
    from shiftkit.train.engine import fit as _fit

    return _fit(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> dict:
    from shiftkit.train.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def predict(*args: Any, **kwargs: Any) -> dict:
    from shiftkit.train.evaluation import predict as _predict

    return _predict(*args, **kwargs)


fit.__doc__ = "Train/adapt a classifier (see shiftkit.train.engine.fit)."
evaluate.__doc__ = "Evaluate a checkpoint on labeled data (see shiftkit.train.evaluation.evaluate)."
predict.__doc__ = "Predict classes for images (see shiftkit.train.evaluation.predict)."

__all__ = ["evaluate", "fit", "predict"]
