"""Writes the project's small sample set (data/sample_*.jsonl) in the NIKL format.

The sentences are written for this project from templates: an emotion-bearing sentence about a target word,
with some null targets, `&others&` endings and `&name1&` placeholders. They exist so the quickstart and the
tests run anywhere; they are not NIKL data. Run `python data/make_sample.py` to regenerate (seeded).
"""

from __future__ import annotations

import json
import os
import random

LABELS = ("joy", "anticipation", "trust", "surprise", "disgust", "fear", "anger", "sadness")

TARGETS = [
    "이 노래",
    "새 앨범",
    "우리 팀",
    "&name1&",
    "그 영화",
    "오늘 공연",
    "이번 드라마",
    "선생님",
    "동생",
    "새 집",
    "이 식당",
    "주말 여행",
    "첫 출근",
    "시험 결과",
    "그 배우",
    "회사",
    "친구",
    "엄마",
    "택배",
    "날씨",
]

TEMPLATES = {
    "joy": [
        "{t} 너무 좋아서 하루 종일 웃었다",
        "{t} 덕분에 진짜 행복해 ㅎㅎ",
        "{t} 최고다 완전 신나!!",
        "{t} 보고 기분 좋아짐 ㅋㅋㅋㅋ",
    ],
    "anticipation": [
        "{t} 언제 나오나 빨리 보고 싶다",
        "{t} 기대돼서 잠이 안 와",
        "{t} 다음 주가 기다려진다",
        "{t} 얼른 왔으면 좋겠다",
    ],
    "trust": ["{t} 믿고 보는 거 알지?", "{t}라면 안심이 된다", "{t}는 늘 믿음직하다", "{t} 말이면 믿을 수 있어"],
    "surprise": [
        "{t} 갑자기 이렇게 되다니 깜짝 놀랐다",
        "헐 {t} 실화냐??",
        "{t} 보고 진짜 놀람 대박",
        "{t} 이런 반전이 있을 줄이야",
    ],
    "disgust": ["{t} 진짜 역겹다 토 나와", "{t} 보기만 해도 질린다", "{t} 더러워서 못 보겠다", "{t} 너무 혐오스러워"],
    "fear": [
        "{t} 때문에 무서워서 잠을 못 잤다",
        "{t} 생각하면 불안하다",
        "{t} 어떡하지 너무 걱정돼",
        "{t} 소름 돋고 겁난다",
    ],
    "anger": [
        "{t} 때문에 화가 머리끝까지 났다",
        "{t} 진짜 빡친다",
        "{t} 짜증 나서 못 참겠음",
        "{t} 어이가 없어서 열받네",
    ],
    "sadness": [
        "{t} 생각하면 눈물이 난다 ㅠㅠ",
        "{t} 때문에 너무 슬퍼",
        "{t} 떠나서 마음이 아프다",
        "{t} 보고 펑펑 울었어",
    ],
}
PAIRS = [("joy", "anticipation"), ("surprise", "joy"), ("anger", "disgust"), ("sadness", "fear"), ("trust", "joy")]
TAILS = ["", "", "", " &others&", " 😊", " ~~", " ...", " https://example.com/post/1"]


def make_row(rng: random.Random, prefix: str, index: int, labelled: bool) -> dict:
    emotions = list(rng.choice(PAIRS)) if rng.random() < 0.15 else [rng.choice(LABELS)]
    target = rng.choice(TARGETS)
    clauses = [rng.choice(TEMPLATES[e]) for e in emotions]
    text = " ".join(clauses).format(t=target) + rng.choice(TAILS)
    begin = text.index(target)
    if rng.random() < 0.1:
        target_obj = {"form": None, "begin": None, "end": None}
    else:
        target_obj = {"form": target, "begin": begin, "end": begin + len(target)}
    if rng.random() < 0.1:
        emotions.append(rng.choice(LABELS))  # annotation noise: real data is never perfectly consistent
    output = {label: "True" if label in emotions else "False" for label in LABELS} if labelled else ""
    return {"id": f"sample-{prefix}-{index:05d}", "input": {"form": text, "target": target_obj}, "output": output}


def main() -> None:
    rng = random.Random(2023)
    here = os.path.dirname(os.path.abspath(__file__))
    for name, count, labelled in (("train", 400, True), ("dev", 100, True), ("test", 100, False)):
        with open(os.path.join(here, f"sample_{name}.jsonl"), "w", encoding="utf-8") as handle:
            for i in range(1, count + 1):
                handle.write(json.dumps(make_row(rng, name, i, labelled), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
