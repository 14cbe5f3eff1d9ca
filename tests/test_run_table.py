"""`nikl-emotion runs DIR ...` (and `report.py --compare`): the table of finished runs the reference kept by hand,
with exactly the settings that differ between the listed runs (issue 49)."""

import csv
import json

import pytest
from conftest import ROOT, SAMPLE_DEV, run_cli

from nikl_emotion.decisions.metrics import score_files

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three n-gram runs (seconds each) that differ in two settings: the threshold and the cleaning."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--model_name_or_path", "ngram:tfidf", "--num_folds", "2", "--test_file", SAMPLE_DEV]
    variants = {"a": [], "b": ["--threshold", "0.4"], "c": ["--cleanse", "false"]}
    for name, keys in variants.items():
        run_cli("train.py", QUICKSTART, *common, *keys, "--output_dir", root / name)
    return root


def test_the_table_shows_exactly_the_settings_that_differ_sorted_by_oof(three_runs, tmp_path):
    (tmp_path / "notes").mkdir()
    folders = [three_runs / name for name in ("a", "b", "c")] + [tmp_path / "notes"]
    table = tmp_path / "runs.md"
    result = run_cli("-m", "nikl_emotion", "runs", *folders, "--gold", SAMPLE_DEV, "--output", table)
    with (tmp_path / "runs.csv").open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    shown = ["run", "kind", "backbone", "head", "input", "loss"]
    after = ["folds", "oof_micro_f1", "oof_exposure", "nested_oof_chosen_rule", "gold_micro_f1", "minutes", "machine"]
    assert list(records[0]) == [*shown, "cleanse", "threshold", *after, "note"]
    assert sorted(record["run"] for record in records) == sorted(str(three_runs / name) for name in "abc")
    oof = [float(record["oof_micro_f1"]) for record in records]
    assert oof == sorted(oof, reverse=True)
    for record in records:
        summary = json.loads((three_runs / record["run"].rsplit("/", 1)[1] / "summary.json").read_text())
        assert float(record["oof_micro_f1"]) == pytest.approx(summary["oof"]["micro_f1"], abs=5e-5)
        gold = score_files(str(SAMPLE_DEV), f"{record['run']}/submission.jsonl")["micro_f1"]
        assert float(record["gold_micro_f1"]) == pytest.approx(gold, abs=5e-5)
        assert record["folds"] == "2" and float(record["minutes"]) > 0 and record["machine"]
    assert {record["threshold"] for record in records} == {"0.5", "0.4"}
    assert "notes: not a run, stack or search (a folder no command of this pipeline made); skipped" in result.stderr
    assert table.read_text(encoding="utf-8") in result.stdout and (tmp_path / "runs.png").stat().st_size > 0
    # report.py --compare is the same table
    compared = run_cli("report.py", "--compare", *folders[:3], "--gold", SAMPLE_DEV)
    assert compared.stdout == table.read_text(encoding="utf-8")
    # a run's own report is not the table's place: refused before anything is written
    report = three_runs / "a" / "report.md"
    before = report.read_bytes()
    refused = run_cli("-m", "nikl_emotion", "runs", *folders[:3], "--output", report, check=False)
    assert refused.returncode == 1 and "--output" in refused.stderr and "report.md is a file of" in refused.stderr
    assert report.read_bytes() == before and not (three_runs / "a" / "report.csv").exists()


def test_a_stack_and_a_search_are_listed_as_what_they_are(three_runs, tmp_path):
    stack = tmp_path / "stack"
    run_cli("ensemble.py", "--runs", three_runs / "a", three_runs / "c", "--strategy", "stack", "--output_dir", stack)
    search = tmp_path / "search"
    ngram = ["--model_name_or_path", "ngram:tfidf", "--num_folds", "2"]
    refused = run_cli("train.py", QUICKSTART, *ngram, "--output_dir", search, "--hp-search", "1", check=False)
    assert refused.returncode == 1  # the n-gram member offers no search: an encoder search makes the folder
    run_cli("train.py", QUICKSTART, "--num_folds", "2", "--num_train_epochs", "1", "--output_dir", search,
            "--hp-search", "1")  # fmt: skip
    result = run_cli("-m", "nikl_emotion", "runs", stack, search, three_runs / "a")
    kinds = [line.split(" | ")[1] for line in result.stdout.splitlines()[2:]]
    assert sorted(kinds[:2]) == ["run", "stack"] and kinds[2] == "hp search"  # a search has no OOF score: last
    assert "stack of 2 runs" in result.stdout and "hp search: 1 trials" in result.stdout
