"""The one label order used everywhere: the order of the official files and scorer."""

__all__ = [
    "LABELS",
    "NUM_LABELS",
    "ID2LABEL",
    "LABEL2ID",
]


LABELS: tuple[str, ...] = ("joy", "anticipation", "trust", "surprise", "disgust", "fear", "anger", "sadness")
NUM_LABELS: int = len(LABELS)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
