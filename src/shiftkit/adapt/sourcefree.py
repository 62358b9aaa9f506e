"""A minimal source-free adaptation loop for classification (target stream only).

Stands in for shiftkit.train's engine until SHOT runs through it: same Method shape (streams,
parameter_groups, on_epoch_start, step -> phases), same run-folder layout (CONVENTIONS.md).
There is no source argument anywhere: the model and unlabeled target images are all it sees.

Label-free model choice: at the start of every epoch (and after the last) the whole target set is
predicted in eval mode; its information-maximisation score H(mean p) - mean H(p) picks the
checkpoint kept as `best`. Target-test labels, when given, only score.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftkit.adapt.shot import im_score
from shiftkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass
class AdaptConfig:
    """Optimisation settings (SHOT's digit recipe by default)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    lr_power: float = 0.75  # lr_t = lr * (1 + 10 p)^-power, p = iteration / total iterations
    seed: int = 0
    eval_batch_size: int = 500
    eval_each_epoch: bool = True  # score target-test every epoch (costs one pass); else only at the end

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"epochs, batch_size and eval_batch_size must be >= 1, got {self.epochs}, {self.batch_size}, {self.eval_batch_size}")
        if not self.lr > 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, momentum >= 0, weight_decay >= 0, got {self.lr}, {self.momentum}, {self.weight_decay}")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, input_spec: Any, device: torch.device, batch_size: int = 500, progress: bool = False, desc: str = "predict"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode pass over uint8 (N, C, H, W) images -> (features (N, D), probabilities (N, K)) on CPU."""
    from shiftkit.models.ccexam import to_model_input

    was_training = model.training
    model.eval()
    feats, probs = [], []
    try:
        from tqdm import tqdm

        starts = tqdm(range(0, len(images), batch_size), desc=desc, file=sys.stderr, leave=False, disable=not progress)
        for i in starts:
            x = to_model_input(images[i : i + batch_size].to(device), input_spec)
            f, logits = model.forward_features(x)
            feats.append(f.float().cpu())
            probs.append(torch.softmax(logits.float(), 1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present in `labels`)."""
    pred = probs.argmax(1)
    labels = labels.to(pred)
    recalls = [float((pred[labels == c] == c).float().mean()) for c in labels.unique().tolist()]
    return {"accuracy": float((pred == labels).float().mean()), "balanced_accuracy": float(np.mean(recalls))}


def _state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """`X.safetensors` (tensors) + `X.json` (architecture spec and context), each written atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(state))
    atomic_write_json(path.with_suffix(".json"), meta)


def run_info() -> dict[str, Any]:
    import shiftkit

    return {
        "versions": {"shiftkit": shiftkit.__version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads",
    }


def adapt_source_free(
    model: nn.Module,
    target: torch.Tensor,
    method: Any,
    config: AdaptConfig | None = None,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    target_test: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
    target_labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Adapt `model` to unlabeled uint8 `target` images (N, C, H, W at the model's input size).

    Returns the final figures (also written to OUT/metrics.json when `out` is given) and leaves
    `model` holding the label-free selected (best) weights. `target_labels`, if given, are only
    compared with the pseudo labels for the log (diagnostics); nothing trains on them.
    """
    from tqdm import tqdm

    cfg = config or AdaptConfig()
    cfg.validate()
    if getattr(method, "streams", ("target",)) != ("target",):
        raise ValueError(f"source-free adaptation takes methods that read only the target stream, got {method.streams}")
    if target.dtype != torch.uint8 or target.dim() != 4 or len(target) == 0:
        raise ValueError(f"target must be a non-empty uint8 (N, C, H, W) tensor, got {target.dtype} {tuple(target.shape)}")
    device = torch.device(device)
    spec = model.input_spec
    gen = seed_everything(cfg.seed)
    model.to(device)
    groups = method.parameter_groups(model)
    params = groups["model"]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
    n = len(target)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    out = Path(out) if out is not None else None
    meta_model = {"model": model.spec, "input": spec.to_dict()}
    resolved = {
        "method": method.config(), "optim": asdict(cfg), "device": str(device), "target_size": n,
        "target_test_size": None if target_test is None else len(target_test[0]), **(extra_config or {}), **meta_model, **run_info(),
    }
    log_lines: list[str] = []
    if out is not None:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", resolved)

    def log(row: dict[str, Any]) -> None:
        log_lines.append(json.dumps(row))
        if out is not None:
            atomic_write_text(out / "log.jsonl", "\n".join(log_lines) + "\n")

    def score_test() -> dict[str, float]:
        if target_test is None:
            return {}
        _, p = predict(model, target_test[0], spec, device, cfg.eval_batch_size)
        return accuracy(p, target_test[1])

    t0 = time.time()
    best: dict[str, Any] = {"im_score": -math.inf}
    history = []
    step = 0
    for epoch in range(cfg.epochs + 1):
        feats, probs = predict(model, target, spec, device, cfg.eval_batch_size, progress, f"label target (epoch {epoch})")
        score = im_score(probs)
        row: dict[str, Any] = {"epoch": epoch, "im_score": score, "mean_entropy": float((-(probs * probs.clamp_min(1e-8).log()).sum(1)).mean())}
        if cfg.eval_each_epoch or epoch in (0, cfg.epochs):
            row.update({f"target_test_{k}": v for k, v in score_test().items()})
        if score > best["im_score"]:
            best = {"im_score": score, "epoch": epoch, "state": _state_to_cpu(model)}
        if epoch == cfg.epochs:
            row["time_s"] = time.time() - t0
            log(row)
            history.append(row)
            break
        row.update(method.on_epoch_start(feats, probs))
        if target_labels is not None and getattr(method, "pseudo_labels", None) is not None:
            row["pseudo_label_accuracy"] = float((method.pseudo_labels.cpu() == target_labels.cpu()).float().mean())
            row["target_argmax_accuracy"] = float((probs.argmax(1) == target_labels.cpu()).float().mean())
        sums: dict[str, float] = {}
        method.train_mode(model)
        order = torch.randperm(n, generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"adapt epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, leave=False, disable=not progress)
        for b in bar:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            lr = cfg.lr * (1 + 10 * step / total_steps) ** (-cfg.lr_power)
            for g in opt.param_groups:
                g["lr"] = lr
            x = spec_input(target[idx].to(device), spec)
            for phase in method.step(model, x, idx):
                loss = sum(phase.losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in {**phase.losses, **(phase.logs or {})}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            step += 1
        row.update({f"loss_{k}": v / steps_per_epoch for k, v in sums.items()})
        row.update({"lr": lr, "time_s": time.time() - t0})
        log(row)
        history.append(row)

    last_state = _state_to_cpu(model)
    final = history[-1]
    if out is not None:
        save_checkpoint(out / "checkpoints" / "last.safetensors", last_state, {**meta_model, "epoch": cfg.epochs, "im_score": final["im_score"], "method": method.name})
        save_checkpoint(out / "checkpoints" / "best.safetensors", best["state"], {**meta_model, "epoch": best["epoch"], "im_score": best["im_score"], "method": method.name, "selected_by": "im_score"})
    model.load_state_dict(best["state"])
    metrics: dict[str, Any] = {
        "selected_epoch": best["epoch"], "selected_by": "im_score (label-free)", "im_score": best["im_score"],
        "epochs": cfg.epochs, "wall_s": time.time() - t0,
    }
    if target_test is not None:
        sel = next(r for r in history if r["epoch"] == best["epoch"])
        test = {k[len("target_test_"):]: v for k, v in sel.items() if k.startswith("target_test_")} or score_test()
        metrics.update(test)
        metrics["source_only_accuracy"] = history[0].get("target_test_accuracy")
        metrics["last_epoch_accuracy"] = final.get("target_test_accuracy")
    if out is not None:
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def spec_input(images: torch.Tensor, spec: Any) -> torch.Tensor:
    from shiftkit.models.ccexam import to_model_input

    return to_model_input(images, spec)


__all__ = ["AdaptConfig", "accuracy", "adapt_source_free", "predict", "save_checkpoint", "seed_everything"]
