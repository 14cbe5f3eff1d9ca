"""`decision: auto`: the run scores each candidate rule on nested out-of-fold predictions and submits with the best."""

import json

import numpy as np
import pytest

from nikl_emotion.base.config import DecisionArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.decisions.decision import choose_rule, describe_choice, fixed_rule
from nikl_emotion.decisions.metrics import decide, score
from nikl_emotion.decisions.thresholds import FittedThresholds, fit_thresholds, nested_thresholds
from nikl_emotion.decisions.voting import DecisionRule

SADNESS = 7


def oof_fixture(seed: int = 0, rows: int = 600, folds: int = 3, squash_sadness: bool = True):
    """OOF probabilities of a model that ranks well but, on sadness, never reaches 0.5 (as the offline recipe did on
    KOTE): a threshold fitted on the other folds recovers the label, the fixed 0.5 never predicts it."""
    rng = np.random.default_rng(seed)
    gold = np.zeros((rows, 8), dtype=bool)
    gold[np.arange(rows), rng.integers(0, 8, rows)] = True
    probs = np.clip(np.where(gold, 0.75, 0.2) + rng.normal(0, 0.12, gold.shape), 0.001, 0.999)
    if squash_sadness:
        probs[:, SADNESS] *= 0.45  # positives around 0.34, negatives around 0.09
    fold_of_row = np.arange(rows) % folds
    return probs, gold, fold_of_row


def choose(probs, gold, fold_of_row, **keys):
    fallback = keys.get("fallback_top_label", True)
    fitted = nested_thresholds(probs, gold, fold_of_row, fallback)
    all_rows = fit_thresholds(probs, gold, fallback=fallback)
    settings = DecisionArguments(**keys)
    thresholds = FittedThresholds(fitted, all_rows)
    return choose_rule(probs, gold, fold_of_row, thresholds, fixed_rule(settings), settings.decision)


def test_auto_chooses_the_rule_that_predicts_the_squashed_label_and_records_every_candidate():
    probs, gold, fold_of_row = oof_fixture()
    rule, record = choose(probs, gold, fold_of_row)
    by_name = {c["name"]: c for c in record["candidates"]}
    assert [c["name"] for c in record["candidates"]] == ["hard", "soft", "hard_tuned", "soft_tuned"]
    assert record["chosen"] == "hard_tuned" and record["mode"] == "auto"
    assert by_name["hard_tuned"]["micro_f1"] > by_name["hard"]["micro_f1"] + 0.02
    assert record["gain_over_fixed"] == pytest.approx(by_name["hard_tuned"]["micro_f1"] - by_name["hard"]["micro_f1"])
    # the submitted rule: each fold at thresholds fitted on all OOF rows, which do predict sadness, then the vote
    assert rule.strategy == "hard" and len(rule.threshold) == 8 and rule.threshold[SADNESS] < 0.5
    assert rule.as_dict() == by_name["hard_tuned"]["rule"]
    assert "auto → hard_tuned" in describe_choice(record) and "over hard" in describe_choice(record)


def test_nested_scores_match_an_independent_computation():
    probs, gold, fold_of_row = oof_fixture(seed=1)
    _, record = choose(probs, gold, fold_of_row)
    by_name = {c["name"]: c for c in record["candidates"]}
    # the fixed rule on OOF rows: one model per row, the threshold and the fallback
    assert by_name["hard"]["micro_f1"] == pytest.approx(score(gold, decide(probs, 0.5))["micro_f1"])
    assert by_name["hard"]["macro_f1"] == pytest.approx(score(gold, decide(probs, 0.5))["macro_f1"])
    # tuned: each fold decided by thresholds fitted on the other folds alone
    expected = np.zeros_like(gold)
    for fold in range(3):
        held = fold_of_row == fold
        expected[held] = decide(probs[held], fit_thresholds(probs[~held], gold[~held]))
    assert by_name["soft_tuned"]["micro_f1"] == pytest.approx(score(gold, expected)["micro_f1"])
    # one held-out model per row: hard and soft twins score the same
    assert by_name["soft"]["micro_f1"] == by_name["hard"]["micro_f1"]
    assert by_name["hard_tuned"]["micro_f1"] == by_name["soft_tuned"]["micro_f1"]


def test_a_tie_keeps_the_simpler_rule():
    rng = np.random.default_rng(2)
    gold = np.zeros((300, 8), dtype=bool)
    gold[np.arange(300), rng.integers(0, 8, 300)] = True
    probs = np.where(gold, 0.9, 0.1)  # separable at 0.5: nothing to gain from fitting
    rule, record = choose(probs, gold, np.arange(300) % 3)
    assert record["chosen"] == "hard" and record["gain_over_fixed"] == 0.0
    assert rule == DecisionRule("hard", 0.5, True, "majority", "positive")


def test_fixed_keeps_the_configured_rule_and_says_what_auto_would_do():
    probs, gold, fold_of_row = oof_fixture()
    rule, record = choose(probs, gold, fold_of_row, decision="fixed", threshold=0.4, vote_tie="negative")
    assert record["chosen"] == "hard" and record["best_by_nested_oof"] == "hard_tuned"
    assert (
        rule
        == DecisionRule("hard", 0.4, True, "majority", "negative")
        == fixed_rule(DecisionArguments(threshold=0.4, vote_tie="negative"))
    )
    assert "auto would choose hard_tuned" in describe_choice(record)


def test_the_configured_reference_rule_is_a_candidate_and_the_fixed_one():
    probs, gold, fold_of_row = oof_fixture(squash_sadness=False)
    rule, record = choose(probs, gold, fold_of_row, vote_rule="reference", decision="fixed")
    assert [c["name"] for c in record["candidates"]] == ["reference", "soft", "hard_tuned", "soft_tuned", "hard"]
    assert rule.vote_rule == "reference"
    with pytest.raises(PipelineError, match="decision: 'sometimes' is not auto or fixed"):
        DecisionArguments(decision="sometimes")


def test_a_run_submits_with_the_rule_it_chose_and_reports_it(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    decision = summary["decision"]
    assert decision["mode"] == "auto" and decision["chosen"] in {c["name"] for c in decision["candidates"]}
    chosen = next(c for c in decision["candidates"] if c["name"] == decision["chosen"])
    # the best of the fixed rule and the rules whose gain over it clears its standard error
    eligible = [c for i, c in enumerate(decision["candidates"]) if i == 0 or c["gain"] > c["gain_se"]]
    assert chosen["micro_f1"] == max(c["micro_f1"] for c in eligible)
    assert json.loads((tiny_run / "decision.json").read_text(encoding="utf-8")) == chosen["rule"]
    assert summary["submission"]["rule"] == decision["chosen"]
    report = (tiny_run / "report.md").read_text(encoding="utf-8")
    assert "## Decision rule" in report and f"**{decision['chosen']}**" in report


def test_a_gain_within_resampling_noise_keeps_the_fixed_rule():
    # sadness: 30 true rows at 0.45 and 27 false rows at 0.46; lowering its threshold trades one for the other
    rng = np.random.default_rng(0)
    rows = 900
    gold = np.zeros((rows, 8), dtype=bool)
    gold[np.arange(rows), rng.integers(0, 7, rows)] = True
    probs = np.where(gold, 0.9, 0.1)
    order = rng.permutation(rows)
    gold[order[:30], SADNESS], probs[order[:30], SADNESS] = True, 0.45
    probs[order[30:57], SADNESS] = 0.46
    _, record = choose(probs, gold, np.arange(rows) % 3)
    tuned = next(c for c in record["candidates"] if c["name"] == "hard_tuned")
    assert 0 < tuned["gain"] < tuned["gain_se"]  # better on these rows, by less than resampling moves it
    assert record["chosen"] == "hard" and record["gain_over_fixed"] == 0.0


def test_the_gain_standard_error_matches_a_plain_bootstrap():
    from nikl_emotion.decisions.decision import gain_standard_error
    from nikl_emotion.decisions.thresholds import micro_f1

    probs, gold, _ = oof_fixture(seed=3)
    base, other = decide(probs, 0.5), decide(probs, np.where(np.arange(8) == SADNESS, 0.2, 0.5))
    rng = np.random.default_rng(1)
    gains = []
    for _ in range(2000):
        rows = rng.integers(0, len(gold), len(gold))
        gains.append(micro_f1(gold[rows], other[rows]) - micro_f1(gold[rows], base[rows]))
    assert gain_standard_error(gold, base, other) == pytest.approx(np.std(gains), rel=0.2)
    assert gain_standard_error(gold, base, base) == 0.0
