"""`ensemble.py --runs A B --strategy stack`: a stacker fitted on the runs' out-of-fold probabilities only."""

import json

import numpy as np
import pytest

from conftest import ROOT, SAMPLE_TEST, SAMPLE_TRAIN, run_cli
from nikl_emotion.data import load_jsonl
from nikl_emotion.errors import PipelineError
from nikl_emotion.fileio import read_probs
from nikl_emotion.stacking import RunMember, apply_stacker, fit_stacker, stack_runs


@pytest.fixture(scope="module")
def ngram_two_folds(tmp_path_factory):
    """An n-gram run on tiny_run's folds (same files, num_folds and seed)."""
    out = tmp_path_factory.mktemp("ngram2") / "out"
    run_cli("train.py", ROOT / "configs" / "quickstart.yaml", "--model_name_or_path", "ngram:tfidf", "--num_folds", "2",
            "--output_dir", out)
    return out


def test_stack_writes_a_submission_fitted_on_oof_only(tiny_run, ngram_two_folds, tmp_path):
    out, probs = tmp_path / "stack.jsonl", tmp_path / "stack_probs.jsonl"
    result = run_cli("ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", out,
                     "--probs", probs)
    assert "stack (nested)" in result.stdout and "mean of the runs" in result.stdout
    submission = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in submission] == load_jsonl(SAMPLE_TEST, "optional")["id"]
    assert all("True" in r["output"].values() for r in submission)
    ids, stacked = read_probs(probs)
    assert ids == [r["id"] for r in submission] and ((stacked >= 0) & (stacked <= 1)).all()


def test_the_stacks_rule_is_chosen_on_its_nested_oof_and_fixed_votes_at_the_threshold(tiny_run, ngram_two_folds, tmp_path):
    from nikl_emotion.stacking import choose_stack_rule
    from nikl_emotion.voting import DecisionRule

    train = load_jsonl(SAMPLE_TRAIN)
    members = [RunMember.load(str(tiny_run), train["id"]), RunMember.load(str(ngram_two_folds), train["id"])]
    gold = np.asarray(train["labels"]) > 0.5
    result = stack_runs(members, gold)
    chosen, record = choose_stack_rule(result, gold, members[0].fold_of_row, DecisionRule("hard", 0.5))
    assert record["candidates"][0]["name"] == "hard" and record["chosen"] in ("hard", "soft", "hard_tuned", "soft_tuned")
    auto, fixed = tmp_path / "auto.jsonl", tmp_path / "fixed.jsonl"
    log = run_cli("ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", auto).stdout
    assert f"decision: auto → {record['chosen']}" in log
    run_cli("ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", fixed,
            "--stack_decision", "fixed", "--threshold", "0.3")
    ids = load_jsonl(SAMPLE_TEST, "optional")["id"]
    for path, rule in ((auto, chosen), (fixed, DecisionRule("hard", 0.3))):
        rows = [json.loads(line)["output"] for line in path.read_text(encoding="utf-8").splitlines()]
        expected = rule.apply(result["fold_test"])
        assert [[row[label] == "True" for label in row] for row in rows] == expected.tolist(), path.name
    assert len(ids) == len(rows)
    refused = run_cli("ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", fixed,
                      "--thresholds", tiny_run / "thresholds.json", check=False)
    assert refused.returncode != 0 and "--stack_decision fixed" in refused.stderr


def test_the_nested_stack_never_sees_the_rows_it_scores(tiny_run, ngram_two_folds):
    train = load_jsonl(SAMPLE_TRAIN)
    members = [RunMember.load(str(tiny_run), train["id"]), RunMember.load(str(ngram_two_folds), train["id"])]
    gold = np.asarray(train["labels"]) > 0.5
    result = stack_runs(members, gold)
    fold_of_row = members[0].fold_of_row
    for k in (0, 1):  # refit by hand on the other fold only: the same held-out probabilities
        held = fold_of_row == k
        models = fit_stacker([m.oof[~held] for m in members], gold[~held])
        np.testing.assert_allclose(result["nested_oof"][held], apply_stacker(models, [m.oof[held] for m in members]))
    assert len(result["fold_test"]) == 2 and result["fold_test"][0].shape == (100, 8)


def test_runs_of_other_folds_or_options_are_refused(tiny_run, tmp_path):
    three_folds = tmp_path / "three"
    run_cli("train.py", ROOT / "configs" / "quickstart.yaml", "--model_name_or_path", "ngram:tfidf",
            "--output_dir", three_folds)
    refused = run_cli("ensemble.py", "--runs", tiny_run, three_folds, "--strategy", "stack", "--output",
                      tmp_path / "s.jsonl", check=False)
    assert refused.returncode == 1 and "its folds differ" in refused.stderr
    assert not (tmp_path / "s.jsonl").exists()
    # an output inside a stacked run would replace that run's own files
    fold_file = three_folds / "fold_0" / "val_probs.jsonl"
    before = fold_file.read_bytes()
    refused = run_cli("ensemble.py", "--runs", tiny_run, three_folds, "--strategy", "stack", "--output", fold_file,
                      check=False)
    assert refused.returncode == 1 and "which its command wrote" in refused.stderr and fold_file.read_bytes() == before
    for extra in (["--weights", "1", "2"], ["--strategy", "hard"]):
        args = ["--runs", tiny_run, three_folds, "--strategy", "stack", "--output", tmp_path / "s.jsonl", *extra]
        assert run_cli("ensemble.py", *args, check=False).returncode == 2
    with pytest.raises(PipelineError, match="not a finished train.py run"):
        RunMember.load(str(tmp_path / "nowhere"), ["r1"])
