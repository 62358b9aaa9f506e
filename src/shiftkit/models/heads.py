"""Heads on top of a backbone. `Classifier` is what training and adaptation methods use.

Adaptation methods need both the features they align and the logits they classify with, so
`forward_features(x) -> (features, logits)`; features are the bottleneck output when there is a
bottleneck (DANN/CDAN/SHOT align that space), else the pooled backbone features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shiftkit.errors import ShiftkitError
from shiftkit.models.backbones import Backbone


def body_head_param_groups(backbone: nn.Module, head_params: list[nn.Parameter], lr: float, head_lr_mult: float = 10.0,
                           weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer groups shared by classifiers and segmenters: the pretrained body at `lr`, the new
    layers at `lr * head_lr_mult`; frozen parameters are left out and an empty group is dropped."""
    if lr <= 0 or head_lr_mult <= 0:
        raise ShiftkitError(f"lr and head_lr_mult must be > 0, got {lr} and {head_lr_mult}")
    head_ids = {id(p) for p in head_params}
    body = [p for p in backbone.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in head_params if p.requires_grad]
    groups = []
    for name, params, group_lr in (("backbone", body, lr), ("head", head, lr * head_lr_mult)):
        if params:
            g: dict[str, Any] = {"name": name, "params": params, "lr": group_lr}
            if weight_decay is not None:
                g["weight_decay"] = weight_decay
            groups.append(g)
    return groups


class Classifier(nn.Module):
    """backbone -> global average pool -> [Linear-BN-ReLU bottleneck] -> Dropout -> Linear -> logits."""

    def __init__(self, backbone: Backbone, num_classes: int, bottleneck: int | None = None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise ShiftkitError(f"Classifier needs a shiftkit Backbone, got {type(backbone).__name__}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ShiftkitError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if bottleneck is not None and (not isinstance(bottleneck, int) or bottleneck < 1):
            raise ShiftkitError(f"bottleneck must be None or a positive integer, got {bottleneck!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ShiftkitError(f"dropout must be in [0, 1), got {dropout!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        d = backbone.out_channels
        if bottleneck:
            self.bottleneck = nn.Sequential(nn.Linear(d, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True))
            d = bottleneck
        else:
            self.bottleneck = nn.Identity()
        self.feature_dim = d
        self.dropout = nn.Dropout(float(dropout)) if dropout else nn.Identity()
        self.head = nn.Linear(d, num_classes)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)
        self.spec: dict[str, Any] = {
            "arch": "classifier", "backbone": dict(backbone.spec), "num_classes": num_classes,
            "bottleneck": bottleneck, "dropout": float(dropout),
        }  # fmt: skip

    @property
    def normalization(self):
        return self.backbone.normalization

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, feature_dim), logits (B, num_classes))."""
        f = self.bottleneck(self.backbone.pooled(x))
        return f, self.head(self.dropout(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.bottleneck, self.head) for p in m.parameters()]

    def param_groups(self, lr: float, head_lr_mult: float = 10.0, weight_decay: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: backbone at `lr`, bottleneck + head at `lr * head_lr_mult`.

        The usual fine-tuning recipe for adaptation (DANN, CDAN, SHOT): the pretrained body moves
        slowly, the new layers fast. Frozen parameters (requires_grad False) are left out;
        an empty backbone group is dropped.
        """
        return body_head_param_groups(self.backbone, self.head_parameters(), lr, head_lr_mult, weight_decay)
