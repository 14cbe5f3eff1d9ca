"""Hard voting: hand-computed outputs, tie rules, the reference's rule, and refusing mismatched files."""

import json

import numpy as np
import pytest
from conftest import LABELS, nikl_row, run_cli, write_jsonl

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_probs
from nikl_emotion.decisions.voting import DecisionRule, ensemble_files, hard_vote


def rows(*labels_per_row):
    out = np.zeros((len(labels_per_row), 8), dtype=bool)
    for i, labels in enumerate(labels_per_row):
        for label in labels:
            out[i, LABELS.index(label)] = True
    return out


def test_majority_of_three():
    a = rows(["joy"], ["fear"], ["anger", "disgust"])
    b = rows(["joy", "trust"], ["fear"], ["anger"])
    c = rows(["trust"], ["sadness"], ["disgust"])
    assert (hard_vote([a, b, c]) == rows(["joy", "trust"], ["fear"], ["anger", "disgust"])).all()


def test_ties_with_even_models_follow_the_tie_rule():
    a = rows(["joy"], ["fear"])
    b = rows(["trust"], ["fear"])
    assert (hard_vote([a, b], DecisionRule(vote_tie="positive")) == rows(["joy", "trust"], ["fear"])).all()
    # negative: row 0 has no majority label -> fallback picks among the most-voted, first in label order
    assert (hard_vote([a, b], DecisionRule(vote_tie="negative")) == rows(["joy"], ["fear"])).all()
    # ... or the higher mean probability when known
    probs = np.zeros((2, 8))
    probs[0, LABELS.index("trust")] = 0.9
    assert (hard_vote([a, b], DecisionRule(vote_tie="negative"), mean_probs=probs) == rows(["trust"], ["fear"])).all()
    assert not hard_vote([a, b], DecisionRule(vote_tie="negative", fallback=False))[0].any()


def test_reference_rule():
    # up to 3 models: the most-voted label(s) of each row
    a, b, c = rows(["joy", "fear"]), rows(["joy"]), rows(["fear", "anger"])
    assert (hard_vote([a, b, c], DecisionRule(vote_rule="reference")) == rows(["joy", "fear"])).all()
    # more than 3: votes >= n/2
    four = [rows(["joy"]), rows(["joy", "fear"]), rows(["fear"]), rows(["anger"])]
    assert (hard_vote(four, DecisionRule(vote_rule="reference")) == rows(["joy", "fear"])).all()


def test_mismatched_ids_are_refused_naming_the_first(tmp_path):
    write_probs(tmp_path / "a.jsonl", ["x", "y", "z"], np.full((3, 8), 0.1))
    write_probs(tmp_path / "b.jsonl", ["x", "z", "y"], np.full((3, 8), 0.1))
    with pytest.raises(PipelineError, match=r"b\.jsonl: row 2 has id 'z' where .*a\.jsonl has 'y'"):
        ensemble_files([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()


def test_ensemble_cli_votes_submission_files(tmp_path):
    files = [
        write_jsonl(
            tmp_path / f"s{i}.jsonl", [nikl_row("a", labels=labels_a), nikl_row("b", target=None, labels=labels_b)]
        )
        for i, (labels_a, labels_b) in enumerate(
            [(("joy",), ("fear",)), (("joy", "trust"), ("anger",)), (("trust",), ("fear",))]
        )
    ]
    out = tmp_path / "voted.jsonl"
    run_cli("ensemble.py", "--inputs", *files, "--output", out)
    voted = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in voted] == ["a", "b"]
    assert [k for k, v in voted[0]["output"].items() if v == "True"] == ["joy", "trust"]
    assert [k for k, v in voted[1]["output"].items() if v == "True"] == ["fear"]
    assert voted[1]["input"] == nikl_row("b", target=None)["input"]


def test_ensemble_cli_error_is_one_line_and_no_output(tmp_path):
    write_probs(tmp_path / "a.jsonl", ["x"], np.full((1, 8), 0.1))
    result = run_cli("ensemble.py", "--inputs", tmp_path / "a.jsonl", "--output", tmp_path / "o.jsonl", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: all inputs are probability files")
    assert not (tmp_path / "o.jsonl").exists()


def test_weights_and_min_votes():
    a, b, c = rows(["joy"], ["fear"]), rows(["trust"], ["fear"]), rows(["trust"], ["anger"])
    # weights 3, 1, 1: model a alone is more than half of 5
    assert (hard_vote([a, b, c], DecisionRule(weights=(3, 1, 1))) == rows(["joy"], ["fear"])).all()
    # a fixed bar of 1 vote: the union
    assert (hard_vote([a, b, c], DecisionRule(min_votes=1)) == rows(["joy", "trust"], ["fear", "anger"])).all()
    assert (hard_vote([a, b, c], DecisionRule(min_votes=3, fallback=False)) == rows([], [])).all()


def test_soft_vote_with_weights_and_per_label_thresholds(tmp_path):
    p1 = np.zeros((2, 8))
    p2 = np.zeros((2, 8))
    p1[0, 0], p2[0, 0] = 0.9, 0.3  # mean 0.6, weighted (1:3) 0.45
    p1[1, 5], p2[1, 5] = 0.2, 0.3  # fear: mean 0.25 - on only with a fear threshold of 0.2
    write_probs(tmp_path / "a.jsonl", ["x", "y"], p1)
    write_probs(tmp_path / "b.jsonl", ["x", "y"], p2)
    write_jsonl(tmp_path / "ref.jsonl", [nikl_row("x"), nikl_row("y")])
    paths = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    thresholds = np.full(8, 0.5)
    thresholds[5] = 0.2
    out = str(tmp_path / "o.jsonl")
    soft = ensemble_files(paths, out, DecisionRule("soft", thresholds), reference_path=str(tmp_path / "ref.jsonl"))
    assert (soft == rows(["joy"], ["fear"])).all()
    weighted = ensemble_files(
        paths, out, DecisionRule("soft", 0.5, weights=(1, 3)), reference_path=str(tmp_path / "ref.jsonl")
    )
    # joy 0.45 < 0.5 -> empty -> fallback to the top label, joy; row y: fear 0.275 < 0.5 -> fallback fear
    assert (weighted == rows(["joy"], ["fear"])).all()
    no_fallback = ensemble_files(
        paths,
        out,
        DecisionRule("soft", 0.5, fallback=False, weights=(1, 3)),
        reference_path=str(tmp_path / "ref.jsonl"),
    )
    assert not no_fallback.any()


def test_align_by_id_reorders_and_still_refuses_other_ids(tmp_path):
    probs = np.zeros((3, 8))
    probs[:, 0] = [0.9, 0.1, 0.2]
    probs[:, 5] = [0.1, 0.8, 0.7]
    write_probs(tmp_path / "a.jsonl", ["x", "y", "z"], probs)
    write_probs(tmp_path / "b.jsonl", ["z", "x", "y"], probs[[2, 0, 1]])
    write_jsonl(tmp_path / "ref.jsonl", [nikl_row("y"), nikl_row("z"), nikl_row("x")])
    paths = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    out = tmp_path / "o.jsonl"
    decisions = ensemble_files(paths, str(out), reference_path=str(tmp_path / "ref.jsonl"), align=True)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["y", "z", "x"]
    assert (decisions == rows(["fear"], ["fear"], ["joy"])).all()
    write_probs(tmp_path / "c.jsonl", ["x", "y", "w"], probs)
    with pytest.raises(PipelineError, match=r"c\.jsonl: has no row for id 'z'"):
        ensemble_files(
            [paths[0], str(tmp_path / "c.jsonl")], str(out), reference_path=str(tmp_path / "ref.jsonl"), align=True
        )


def test_duplicate_ids_in_a_probability_file_are_refused(tmp_path):
    from nikl_emotion.base.errors import RowError

    path = tmp_path / "p.jsonl"
    write_probs(path, ["x", "y", "x"], np.full((3, 8), 0.1))
    with pytest.raises(RowError, match=r"p\.jsonl:3: id: duplicate id 'x' \(first at line 1\)"):
        ensemble_files([str(path)], str(tmp_path / "o.jsonl"), reference_path=None)
