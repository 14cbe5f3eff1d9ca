"""The one label order used everywhere: the order of the official files and scorer."""

__all__ = [
    "LABELS",
    "NUM_LABELS",
    "ID2LABEL",
    "LABEL2ID",
    "KOREAN_NAMES",
]


LABELS: tuple[str, ...] = ("joy", "anticipation", "trust", "surprise", "disgust", "fear", "anger", "sadness")
NUM_LABELS: int = len(LABELS)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
# the emotions' Korean names (Plutchik's eight, as the NIKL task guide names them), for pages people read
KOREAN_NAMES: dict[str, str] = {
    "joy": "기쁨",
    "anticipation": "기대",
    "trust": "신뢰",
    "surprise": "놀람",
    "disgust": "혐오",
    "fear": "공포",
    "anger": "분노",
    "sadness": "슬픔",
}
