"""Multi-label losses on logits and float multi-hot targets, exactly as their references define them.

- `BCELoss`: binary cross-entropy on logits (`torch.nn.BCEWithLogitsLoss`), optional `pos_weight` per label.
- `FocalLoss`: torchvision's `sigmoid_focal_loss`: BCE·(1−p_t)^γ, weighted by α_t = α·y + (1−α)(1−y); α < 0
  turns the weighting off. Defaults α=0.25, γ=2.
- `AsymmetricLoss`: Alibaba-MIIL's `AsymmetricLoss` (Ridnik et al., 2021): the negative probability is shifted,
  xs_neg = min(1−p+clip, 1); loss = −[y·log(max(p, eps)) + (1−y)·log(max(xs_neg, eps))]·(1−p_t)^(γ+·y + γ−·(1−y))
  with p_t = p·y + xs_neg·(1−y). Defaults γ−=4, γ+=1, clip=0.05, eps=1e-8.

Each takes `reduction` in {"none", "mean", "sum"}: "none" returns the (N, C) element-wise loss (positive values),
"mean" averages over all N×C elements (as `BCEWithLogitsLoss`), "sum" adds them (torchvision's and Alibaba-MIIL's
own default for ASL is "sum", the reference pipeline's Focal used "sum"). `label_smoothing` ε replaces the targets
by y' = y(1−ε) + ε/2 before the formula, wherever y appears.

The pipeline knows a loss as a registered `Loss` (`LOSSES`, `register_loss`, as heads are registered): its config
name, its class, its own config keys (`focal_gamma` -> FocalLoss's `gamma`), their checks, search ranges and
construction. Adding a loss is a class here (or in a user's module) and one `register_loss` call.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nikl_emotion.base.config import LossArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.registries import add_named
from nikl_emotion.base.vocabulary import check_choice

__all__ = [
    "LossParameterError",
    "smooth_targets",
    "MultiLabelLoss",
    "BCELoss",
    "FocalLoss",
    "AsymmetricLoss",
    "LossKey",
    "Loss",
    "LOSSES",
    "register_loss",
    "loss_named",
    "build_loss",
    "loss_arguments_class",
]


_REDUCTIONS = ("none", "mean", "sum")


class LossParameterError(ValueError):
    """A loss parameter out of its range. `parameter` names it, so a config can name its own key for it."""

    def __init__(self, parameter: str, requirement: str, value, message: str | None = None):
        self.parameter, self.requirement, self.value = parameter, requirement, value
        super().__init__(message or f"{parameter} {requirement}, got {value}")


def _check_parameter(ok: bool, parameter: str, requirement: str, value, message: str | None = None) -> None:
    if not ok:
        raise LossParameterError(parameter, requirement, value, message)


def smooth_targets(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Multi-label smoothing: each binary target moves ε/2 towards the other class."""
    if label_smoothing == 0:
        return targets
    return targets * (1.0 - label_smoothing) + 0.5 * label_smoothing


def _reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class MultiLabelLoss(nn.Module):
    """Shared argument checks for the losses below."""

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        _check_parameter(
            reduction in _REDUCTIONS, "reduction", f"must be one of {', '.join(_REDUCTIONS)}", repr(reduction)
        )
        _check_parameter(0.0 <= label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)", label_smoothing)
        self.reduction = reduction
        self.label_smoothing = label_smoothing


class BCELoss(MultiLabelLoss):
    """Binary cross-entropy on logits, optionally with a positive-class weight per label."""

    def __init__(
        self,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        pos_weight: Sequence[float] | torch.Tensor | None = None,
    ):
        super().__init__(reduction, label_smoothing)
        self.register_buffer(
            "pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_targets(targets.to(logits.dtype), self.label_smoothing)
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
        return _reduce_loss(loss, self.reduction)


class FocalLoss(MultiLabelLoss):
    """torchvision.ops.sigmoid_focal_loss as a module."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction, label_smoothing)
        _check_parameter(gamma >= 0, "gamma", "must be >= 0", gamma)
        _check_parameter(alpha <= 1, "alpha", "must be <= 1 (negative turns the weighting off)", alpha)
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = smooth_targets(targets.to(logits.dtype), self.label_smoothing)
        p = torch.sigmoid(logits)
        ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce_loss * ((1 - p_t) ** self.gamma)
        if self.alpha >= 0:
            alpha_t = self.alpha * targets + (1 - self.alpha) * (1 - targets)
            loss = alpha_t * loss
        return _reduce_loss(loss, self.reduction)


class AsymmetricLoss(MultiLabelLoss):
    """Alibaba-MIIL's AsymmetricLoss as a module.

    `disable_torch_grad_focal_loss=True` computes the focusing weight without gradient, as the reference's option
    does, but scoped with `torch.no_grad()`: the reference toggles grad mode globally and would turn gradients back
    on inside the Trainer's evaluation. The parameters are the reference's; `reduction` and `label_smoothing`
    (keywords) are every loss's, checked by `MultiLabelLoss`.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = False,
        **common,
    ):
        super().__init__(**common)
        for name, gamma in (("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos)):
            _check_parameter(
                gamma >= 0,
                name,
                "must be >= 0",
                gamma,
                f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}",
            )
        _check_parameter(clip is None or 0 <= clip < 1, "clip", "must be in [0, 1)", clip)
        _check_parameter(0 < eps < 1, "eps", "must be in (0, 1)", eps)
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = smooth_targets(targets.to(logits.dtype), self.label_smoothing)
        xs_pos = torch.sigmoid(logits)
        xs_neg = 1 - xs_pos
        if self.clip is not None and self.clip > 0:
            xs_neg = (xs_neg + self.clip).clamp(max=1)  # probability shifting
        loss = y * torch.log(xs_pos.clamp(min=self.eps)) + (1 - y) * torch.log(xs_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.no_grad() if self.disable_torch_grad_focal_loss else contextlib.nullcontext():
                pt = xs_pos * y + xs_neg * (1 - y)
                one_sided_gamma = self.gamma_pos * y + self.gamma_neg * (1 - y)
                one_sided_w = torch.pow(1 - pt, one_sided_gamma)
            loss = loss * one_sided_w
        return _reduce_loss(-loss, self.reduction)


@dataclass(frozen=True)
class LossKey:
    """One of a loss's own config keys: the loss class's `parameter` it sets, its default and help, and the range a
    hyper-parameter search draws it from (None: not searched)."""

    key: str
    parameter: str
    default: Any
    help: str
    search: tuple[float, float] | None = None


class Loss:
    """A training loss as the pipeline knows it: its config name (`loss: NAME`), the `MultiLabelLoss` class it
    builds, its own config keys (each a `LossKey`), their validation (the class's own checks, the message naming
    the key), its search space and its construction. `register_loss` adds one: a key it brings that
    `LossArguments` lacks becomes a config key of its own (`loss_arguments_class`)."""

    name: str = ""
    loss_class: type[MultiLabelLoss] = MultiLabelLoss
    keys: tuple[LossKey, ...] = ()

    def parameters(self, loss_args) -> dict:
        """The class's parameters from the settings' keys."""
        return {key.parameter: getattr(loss_args, key.key) for key in self.keys}

    def build(self, loss_args, train_labels: np.ndarray, **common) -> MultiLabelLoss:
        """The loss for a fold whose training rows have `train_labels`; `common`: reduction and label smoothing."""
        return self.loss_class(**self.parameters(loss_args), **common)

    def suggest(self, trial) -> dict:
        """A search trial's values of the keys that have a range (config key -> value)."""
        return {key.key: trial.suggest_float(key.key, *key.search) for key in self.keys if key.search is not None}

    def check(self, loss_args) -> None:
        """The settings' values of this loss's keys, checked by its class; the error names the config key."""
        config_key = {key.parameter: key.key for key in self.keys}
        try:
            self.loss_class(**self.parameters(loss_args), label_smoothing=loss_args.label_smoothing)
        except LossParameterError as exc:
            raise PipelineError(
                f"{config_key.get(exc.parameter, exc.parameter)}: {exc.requirement}, got {exc.value}"
            ) from None


class _BCE(Loss):
    """BCE's one key, `pos_weight` (none, auto or 8 numbers), is a `LossArguments` field of its own: `auto` is
    computed from the labels of the fold's training split only, so the validation rows never shape the loss."""

    name, loss_class = "bce", BCELoss

    def build(self, loss_args, train_labels: np.ndarray, **common) -> MultiLabelLoss:
        pos_weight = loss_args.parsed_pos_weight()
        if pos_weight == "auto":
            positives = np.asarray(train_labels).sum(axis=0)
            negatives = len(train_labels) - positives
            pos_weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).tolist()
        return BCELoss(pos_weight=pos_weight, **common)

    def suggest(self, trial) -> dict:
        return {"pos_weight": trial.suggest_categorical("pos_weight", ["none", "auto"])}


class _Focal(Loss):
    name, loss_class = "focal", FocalLoss
    keys = (
        LossKey("focal_alpha", "alpha", 0.25, "Focal alpha; negative turns the alpha weighting off.", (0.1, 0.9)),
        LossKey("focal_gamma", "gamma", 2.0, "Focal gamma (>= 0).", (0.0, 4.0)),
    )


class _Asymmetric(Loss):
    name, loss_class = "asl", AsymmetricLoss
    keys = (
        LossKey("asl_gamma_neg", "gamma_neg", 4.0, "ASL focusing for negatives (>= 0).", (0.0, 6.0)),
        LossKey("asl_gamma_pos", "gamma_pos", 1.0, "ASL focusing for positives (>= 0)."),
        LossKey("asl_clip", "clip", 0.05, "ASL probability margin for negatives, in [0, 1).", (0.0, 0.2)),
        LossKey("asl_eps", "eps", 1e-8, "ASL log clamp, in (0, 1)."),
        LossKey(
            "asl_disable_torch_grad_focal_loss",
            "disable_torch_grad_focal_loss",
            False,
            "ASL: no gradient through the focusing weight.",
        ),
    )


LOSSES: dict[str, Loss] = {}


def register_loss(loss: Loss) -> Loss:
    """Make `loss` a `loss` value every command accepts, its keys config keys (a name registered twice is refused)."""
    return add_named(LOSSES, loss, "loss")


for _builtin in (_BCE(), _Focal(), _Asymmetric()):
    register_loss(_builtin)


def loss_named(name: str) -> Loss:
    """The registered loss `name`; refused with the registered names otherwise."""
    check_choice("loss", name, tuple(LOSSES))
    return LOSSES[name]


def build_loss(name: str, **kwargs) -> MultiLabelLoss:
    """The registered loss `name`'s class built with its own parameter names (`gamma`, not `focal_gamma`)."""
    return loss_named(name).loss_class(**kwargs)


def loss_arguments_class() -> type[LossArguments]:
    """`LossArguments` with every registered loss's own keys (each with its default and help): the dataclass the
    settings are parsed into, so `--focal_gamma 3` or a registered loss's key is a config key like any other."""
    own = {field.name for field in dataclasses.fields(LossArguments)}
    extra = [_loss_field(loss, key) for loss in LOSSES.values() for key in loss.keys if key.key not in own]
    if not extra:
        return LossArguments
    parsed = dataclasses.make_dataclass("LossArguments", extra, bases=(LossArguments,))
    parsed.__module__ = __name__
    return parsed


def _loss_field(loss: Loss, key: LossKey) -> tuple:
    help_text = f"{loss.name} loss: {key.help}"
    return key.key, type(key.default), dataclasses.field(default=key.default, metadata={"help": help_text})
