"""One decision rule, saved with the run: `inference.py --run OUT` re-decides the run's folds exactly as its
submission.jsonl was made, for the majority and the reference vote."""

import importlib

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_TEST

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.decisions.voting import DecisionRule, hard_vote


def run_inference(capsys, monkeypatch, *args, script: str = "inference") -> int:
    module = importlib.import_module(script)
    monkeypatch.setattr("sys.argv", [f"{script}.py", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        module.entry_point(module.main)()
    capsys.readouterr()
    return exited.value.code


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    out = tmp_path_factory.mktemp("ref") / "out"
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--output_dir",
                str(out),
                "--num_folds",
                "3",
                "--num_train_epochs",
                "3",
                "--vote_rule",
                "reference",
                "--decision",
                "fixed",
                "--disable_tqdm",
                "true",
            ]
        )
    )
    return out


@pytest.mark.parametrize("which", ["majority", "reference"])
def test_inference_over_a_run_writes_its_submission_byte_for_byte(
    tiny_run, reference_run, tmp_path, capsys, monkeypatch, which
):
    run = tiny_run if which == "majority" else reference_run
    assert DecisionRule.load(str(run / "decision.json")).vote_rule == which
    out = tmp_path / "again.jsonl"
    assert (
        run_inference(capsys, monkeypatch, "--run", run, "--input", SAMPLE_TEST, "--output", out, "--device", "cpu")
        == 0
    )
    assert out.read_bytes() == (run / "submission.jsonl").read_bytes()
    # ensemble.py votes the fold files by the same saved rule
    voted = tmp_path / "voted.jsonl"
    folds = sorted(str(p) for p in run.glob("fold_*/test_probs.jsonl"))
    assert (
        run_inference(
            capsys,
            monkeypatch,
            "--inputs",
            *folds,
            "--reference",
            SAMPLE_TEST,
            "--output",
            voted,
            "--decision",
            run / "decision.json",
            script="ensemble",
        )
        == 0
    )
    assert voted.read_bytes() == (run / "submission.jsonl").read_bytes()
    assert (
        run_inference(
            capsys,
            monkeypatch,
            "--inputs",
            *folds,
            "--reference",
            SAMPLE_TEST,
            "--output",
            voted,
            "--decision",
            run / "decision.json",
            "--rule",
            "reference",
            script="ensemble",
        )
        == 2
    )


def test_run_takes_its_own_rule_only(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.jsonl"
    assert (
        run_inference(
            capsys, monkeypatch, "--run", tiny_run, "--threshold", "0.3", "--input", SAMPLE_TEST, "--output", out
        )
        == 2
    )
    assert run_inference(capsys, monkeypatch, "--run", tmp_path, "--input", SAMPLE_TEST, "--output", out) == 1
    assert not out.exists()


def test_the_rule_validates_itself_and_round_trips(tmp_path):
    rule = DecisionRule("hard", tuple(np.linspace(0.2, 0.9, 8)), True, "reference", "negative")
    rule.save(str(tmp_path / "d.json"))
    assert DecisionRule.load(str(tmp_path / "d.json")) == rule
    for bad, message in (
        ({"strategy": "mean"}, "strategy"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": (0.5, 0.5)}, "threshold"),
        ({"vote_rule": "plurality"}, "vote_rule"),
        ({"weights": (1.0, float("nan"))}, "weights"),
        ({"min_votes": -1.0}, "min_votes"),
    ):
        with pytest.raises(PipelineError, match=message):
            DecisionRule(**bad)


def test_the_rule_applies_the_vote_rule_it_names():
    rng = np.random.default_rng(0)
    probs = [rng.random((200, 8)) ** 3 for _ in range(3)]  # sparse decisions: the two rules disagree on many rows
    decisions = [p >= 0.5 for p in probs]
    fell_back = [
        d | (~d.any(axis=1, keepdims=True) & (p == p.max(axis=1, keepdims=True))) for d, p in zip(decisions, probs)
    ]
    results = {}
    for rule_name in ("majority", "reference"):
        results[rule_name] = DecisionRule(vote_rule=rule_name).apply(probs)
        expected = hard_vote(fell_back, DecisionRule(vote_rule=rule_name), mean_probs=np.mean(probs, axis=0))
        np.testing.assert_array_equal(results[rule_name], expected)
    assert (results["majority"] != results["reference"]).any(axis=1).sum() > 10


def test_the_vocabulary_is_the_one_every_place_accepts():
    import dataclasses

    from nikl_emotion.base.config import DecisionArguments
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.base.vocabulary import DECISION_MODES, STRATEGIES, VOTE_RULES, VOTE_TIES
    from nikl_emotion.decisions.voting import DecisionRule

    for strategy in STRATEGIES:
        for rule in VOTE_RULES:
            for tie in VOTE_TIES:
                DecisionRule(strategy, 0.5, True, rule, tie)
                DecisionArguments(vote_rule=rule, vote_tie=tie)
    for mode in DECISION_MODES:
        DecisionArguments(decision=mode)
    for key, bad in (("strategy", "mean"), ("vote_rule", "unanimous"), ("vote_tie", "coin")):
        with pytest.raises(PipelineError, match=f"{key}: '{bad}' is not"):
            dataclasses.replace(DecisionRule(), **{key: bad})
    with pytest.raises(PipelineError, match="decision: 'best' is not auto or fixed"):
        DecisionArguments(decision="best")
