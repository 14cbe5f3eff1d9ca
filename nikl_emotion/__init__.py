"""Target-aware multi-label emotion classification for the NIKL 2023 emotion analysis task."""

from nikl_emotion.base.labels import ID2LABEL, LABEL2ID, LABELS, NUM_LABELS

__all__ = ["LABELS", "NUM_LABELS", "ID2LABEL", "LABEL2ID", "EmotionClassifier"]


def __getattr__(name: str):
    # imported on first use: `import nikl_emotion` for the labels must not pull in torch and transformers
    if name == "EmotionClassifier":
        from nikl_emotion.runs.run_classifier import EmotionClassifier

        return EmotionClassifier
    raise AttributeError(f"module 'nikl_emotion' has no attribute {name!r}")
