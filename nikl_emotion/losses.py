"""Multi-label losses on logits and float multi-hot targets.

Each loss takes `reduction` in {"none", "mean", "sum"}: "none" returns the (N, C) element-wise loss, "mean"
averages over all N×C elements (as `torch.nn.BCEWithLogitsLoss`), "sum" adds them. `label_smoothing` ε replaces
the targets by y(1−ε) + ε/2 before the formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("none", "mean", "sum")


def smooth_targets(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Multi-label smoothing: each binary target moves ε/2 towards the other class."""
    if label_smoothing == 0:
        return targets
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class MultiLabelLoss(nn.Module):
    """Shared argument checks for the losses below."""

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.reduction = reduction
        self.label_smoothing = label_smoothing


class BCELoss(MultiLabelLoss):
    """Binary cross-entropy on logits, optionally with a positive-class weight per label."""

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0, pos_weight: Sequence[float] | torch.Tensor | None = None):
        super().__init__(reduction, label_smoothing)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_targets(targets.to(logits.dtype), self.label_smoothing)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
        return reduce_loss(loss, self.reduction)


LOSSES: dict[str, type[MultiLabelLoss]] = {"bce": BCELoss}


def build_loss(name: str, **kwargs) -> MultiLabelLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](**kwargs)
