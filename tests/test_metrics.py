"""The official metric against an independent formula, the decision rule, the evaluate module and score.py."""

import json

import evaluate
import numpy as np
import pytest
from conftest import LABELS, ROOT, nikl_row, run_cli, write_jsonl
from sklearn.metrics import f1_score

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.decisions.metrics import decide, score, score_files
from nikl_emotion.decisions.thresholds import micro_f1 as threshold_search_micro_f1


def micro_f1_by_hand(gold, pred):
    tp = np.sum((gold == 1) & (pred == 1))
    fp = np.sum((gold == 0) & (pred == 1))
    fn = np.sum((gold == 1) & (pred == 0))
    return 2 * tp / (2 * tp + fp + fn)


def test_scores_equal_the_formula_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = rng.integers(1, 300)
        gold = (rng.random((n, 8)) < 0.2).astype(int)
        pred = (rng.random((n, 8)) < rng.uniform(0.05, 0.5)).astype(int)
        result = score(gold, pred)
        assert result["micro_f1"] == pytest.approx(micro_f1_by_hand(gold, pred))
        assert result["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro", zero_division=0))
        assert threshold_search_micro_f1(gold.astype(bool), pred.astype(bool)) == pytest.approx(result["micro_f1"])
        per_label = [
            micro_f1_by_hand(gold[:, j], pred[:, j]) if (gold[:, j].sum() + pred[:, j].sum()) else 0.0 for j in range(8)
        ]
        assert result["macro_f1"] == pytest.approx(np.mean(per_label))
        assert [result["per_label"][label]["f1"] for label in LABELS] == pytest.approx(per_label)


def test_decide_threshold_and_fallback():
    probs = np.array([[0.9, 0.6, 0.1, 0, 0, 0, 0, 0], [0.2, 0.3, 0.4, 0, 0, 0, 0, 0.1], [0.5, 0, 0, 0, 0, 0, 0, 0]])
    assert decide(probs).astype(int).tolist() == [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert not decide(probs, fallback=False)[1].any()


def test_evaluate_module_loads_offline_and_agrees():
    metric = evaluate.load(str(ROOT / "metrics" / "nikl_ea_f1"))
    rng = np.random.default_rng(1)
    gold = (rng.random((40, 8)) < 0.2).astype(int)
    pred = (rng.random((40, 8)) < 0.2).astype(int)
    result = metric.compute(predictions=pred.tolist(), references=gold.tolist())
    assert result["micro_f1"] == pytest.approx(micro_f1_by_hand(gold, pred))


def test_score_files_matches_rows_by_id(tmp_path):
    gold = write_jsonl(
        tmp_path / "gold.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("fear", "anger"))]
    )
    pred = write_jsonl(tmp_path / "pred.jsonl", [nikl_row("b", labels=("fear",)), nikl_row("a", labels=("joy",))])
    assert score_files(str(gold), str(pred))["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    partial = write_jsonl(tmp_path / "partial.jsonl", [nikl_row("a")])
    with pytest.raises(PipelineError, match="no prediction for id 'b'"):
        score_files(str(gold), str(partial))


def test_score_cli_json_last_line(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("sadness",))])
    pred = write_jsonl(tmp_path / "pred.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("joy",))])
    result = run_cli("score.py", gold, pred, "--json", "--per-label")
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["micro_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and set(last["per_label"]) == set(LABELS)
    assert "precision" in result.stdout and "support" in result.stdout
