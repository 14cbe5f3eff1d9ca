"""The submission file is byte-exact in the official format."""

import json

import numpy as np

from nikl_emotion.base.fileio import write_submission


def test_submission_bytes(tmp_path):
    inputs = [
        {"form": "오늘 공연 좋았다 &others&", "target": {"form": "공연", "begin": 3, "end": 5}},
        {"form": "슬프다", "target": {"form": None, "begin": None, "end": None}},
    ]
    decisions = np.zeros((2, 8), dtype=bool)
    decisions[0, [0, 1]] = True
    decisions[1, 7] = True
    path = tmp_path / "sub.jsonl"
    write_submission(path, ["id-1", "id-2"], inputs, decisions)
    expected = (
        '{"id": "id-1", "input": {"form": "오늘 공연 좋았다 &others&", '
        '"target": {"form": "공연", "begin": 3, "end": 5}}, '
        '"output": {"joy": "True", "anticipation": "True", "trust": "False", "surprise": "False", "disgust": "False", '
        '"fear": "False", "anger": "False", "sadness": "False"}}\n'
        '{"id": "id-2", "input": {"form": "슬프다", "target": {"form": null, "begin": null, "end": null}}, '
        '"output": {"joy": "False", "anticipation": "False", "trust": "False", "surprise": "False", '
        '"disgust": "False", "fear": "False", "anger": "False", "sadness": "True"}}\n'
    )
    assert path.read_bytes() == expected.encode("utf-8")
    assert list(json.loads(path.read_text(encoding="utf-8").splitlines()[0])["output"]) == [
        "joy",
        "anticipation",
        "trust",
        "surprise",
        "disgust",
        "fear",
        "anger",
        "sadness",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["sub.jsonl"]  # no temp file left behind
