"""Losses for multi-label emotion classification (implementation: `nikl_emotion.backends.losses`)."""

from nikl_emotion.backends.losses import (
    LOSSES,
    AsymmetricLoss,
    BCELoss,
    FocalLoss,
    Loss,
    LossKey,
    build_loss,
    register_loss,
    smooth_targets,
)

__all__ = [
    "BCELoss",
    "FocalLoss",
    "AsymmetricLoss",
    "LOSSES",
    "Loss",
    "LossKey",
    "register_loss",
    "build_loss",
    "smooth_targets",
]
