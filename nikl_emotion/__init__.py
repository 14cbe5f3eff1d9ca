"""Target-aware multi-label emotion classification for the NIKL 2023 emotion analysis task."""

from nikl_emotion.labels import ID2LABEL, LABEL2ID, LABELS, NUM_LABELS

__all__ = ["LABELS", "NUM_LABELS", "ID2LABEL", "LABEL2ID"]
