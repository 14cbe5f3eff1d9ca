"""Losses for multi-label emotion classification (implementation: `nikl_emotion.backends.losses`)."""

from nikl_emotion.backends.losses import LOSSES, AsymmetricLoss, BCELoss, FocalLoss, build_loss, smooth_targets

__all__ = ["BCELoss", "FocalLoss", "AsymmetricLoss", "LOSSES", "build_loss", "smooth_targets"]
