"""OOF thresholds: the search recovers a known optimum; the nested estimate; the thresholds file."""

import json

import numpy as np
import pytest
from conftest import LABELS

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.decisions.metrics import decide
from nikl_emotion.decisions.thresholds import (
    fit_global_threshold,
    fit_thresholds,
    load_thresholds,
    micro_f1,
    nested_gain,
    save_thresholds,
)

KNOWN = np.array([0.23, 0.61, 0.35, 0.80, 0.12, 0.47, 0.66, 0.29])


def separable(n=2000, seed=0):
    """Label j is on exactly when its probability is >= KNOWN[j]; negatives stop just below (gap < one grid step)."""
    rng = np.random.default_rng(seed)
    gold = rng.random((n, 8)) < 0.25
    gold[~gold.any(axis=1), 0] = True
    below = rng.uniform(0, KNOWN - 0.004, size=(n, 8))
    above = rng.uniform(KNOWN, 1.0, size=(n, 8))
    below[0], above[0] = KNOWN - 0.004, KNOWN  # the extremes are present
    return np.where(gold, above, below), gold


def test_search_recovers_the_known_per_label_optimum():
    probs, gold = separable()
    fitted = fit_thresholds(probs, gold)
    np.testing.assert_allclose(fitted, KNOWN, atol=1e-9)
    assert micro_f1(gold, decide(probs, fitted)) == 1.0
    assert micro_f1(gold, decide(probs, 0.5)) < 0.95


def test_global_threshold_is_the_best_single_value():
    probs, gold = separable(seed=1)
    best = fit_global_threshold(probs, gold)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    assert micro_f1(gold, decide(probs, best)) == max(micro_f1(gold, decide(probs, t)) for t in grid)


def test_search_scores_with_the_fallback():
    # one label, always gold; probabilities all below any grid value: with fallback every row is right anyway
    probs = np.full((50, 8), 0.01)
    probs[:, 3] = 0.02
    gold = np.zeros((50, 8), dtype=bool)
    gold[:, 3] = True
    fitted = fit_thresholds(probs, gold)
    assert micro_f1(gold, decide(probs, fitted)) == 1.0


def test_nested_gain_is_measured_on_rows_not_used_for_fitting():
    probs, gold = separable(n=1500, seed=2)
    folds = np.arange(len(probs)) % 5
    result = nested_gain(probs, gold, folds)
    assert result["micro_f1_tuned_nested"] > result["micro_f1_at_default"] + 0.05
    # noise makes the nested estimate honest: fitted on random labels it gains nothing on held-out rows
    rng = np.random.default_rng(3)
    noise = rng.random(probs.shape)
    random_gold = rng.random(probs.shape) < 0.2
    honest = nested_gain(noise, random_gold, folds)
    in_sample = micro_f1(random_gold, decide(noise, fit_thresholds(noise, random_gold)))
    assert honest["micro_f1_tuned_nested"] < in_sample


def test_thresholds_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "thresholds.json"
    save_thresholds(str(path), KNOWN, 0.4, {"micro_f1_at_default": 0.5})
    np.testing.assert_allclose(load_thresholds(str(path)), KNOWN)
    np.testing.assert_allclose(load_thresholds(str(path), "global"), np.full(8, 0.4))
    data = json.loads(path.read_text())
    assert list(data["per_label"]) == LABELS
    data["per_label"]["joy"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError, match="thresholds must be in"):
        load_thresholds(str(path))
