"""Losses for multi-label emotion classification (implementation: `nikl_emotion.losses`)."""

from nikl_emotion.losses import LOSSES, BCELoss, build_loss, smooth_targets

__all__ = ["BCELoss", "LOSSES", "build_loss", "smooth_targets"]
