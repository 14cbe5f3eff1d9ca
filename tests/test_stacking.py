"""`ensemble.py --runs A B --strategy stack`: a stacker fitted on the runs' out-of-fold probabilities only."""

import importlib
import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_TEST, SAMPLE_TRAIN, run_cli

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.base.labels import LABELS
from nikl_emotion.decisions.stacking import apply_stacker, fit_stacker, stack_runs
from nikl_emotion.runs.stack_run import RunMember
from nikl_emotion.text.data import load_jsonl


@pytest.fixture(scope="module")
def ngram_two_folds(tmp_path_factory):
    """An n-gram run on tiny_run's folds (same files, num_folds and seed)."""
    out = tmp_path_factory.mktemp("ngram2") / "out"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        "ngram:tfidf",
        "--num_folds",
        "2",
        "--output_dir",
        out,
    )
    return out


def test_stack_writes_a_submission_fitted_on_oof_only(tiny_run, ngram_two_folds, tmp_path):
    out, probs = tmp_path / "stack.jsonl", tmp_path / "stack_probs.jsonl"
    result = run_cli(
        "ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", out, "--probs", probs
    )
    assert "stack (nested)" in result.stdout and "mean of the runs" in result.stdout
    submission = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in submission] == load_jsonl(SAMPLE_TEST, "optional")["id"]
    assert all("True" in r["output"].values() for r in submission)
    ids, stacked = read_probs(probs)
    assert ids == [r["id"] for r in submission] and ((stacked >= 0) & (stacked <= 1)).all()


def test_the_stacks_rule_is_chosen_on_its_nested_oof_and_fixed_votes_at_the_threshold(
    tiny_run, ngram_two_folds, tmp_path
):
    from nikl_emotion.decisions.stacking import choose_stack_rule
    from nikl_emotion.decisions.voting import DecisionRule

    train = load_jsonl(SAMPLE_TRAIN)
    members = [RunMember.load(str(tiny_run), train["id"]), RunMember.load(str(ngram_two_folds), train["id"])]
    gold = np.asarray(train["labels"]) > 0.5
    result = stack_runs(members, gold)
    chosen, record = choose_stack_rule(result, gold, members[0].fold_of_row, DecisionRule("hard", 0.5))
    assert record["candidates"][0]["name"] == "hard" and record["chosen"] in (
        "hard",
        "soft",
        "hard_tuned",
        "soft_tuned",
    )
    auto, fixed = tmp_path / "auto.jsonl", tmp_path / "fixed.jsonl"
    log = run_cli("ensemble.py", "--runs", tiny_run, ngram_two_folds, "--strategy", "stack", "--output", auto).stdout
    assert f"decision: auto → {record['chosen']}" in log
    run_cli(
        "ensemble.py",
        "--runs",
        tiny_run,
        ngram_two_folds,
        "--strategy",
        "stack",
        "--output",
        fixed,
        "--stack_decision",
        "fixed",
        "--threshold",
        "0.3",
    )
    ids = load_jsonl(SAMPLE_TEST, "optional")["id"]
    for path, rule in ((auto, chosen), (fixed, DecisionRule("hard", 0.3))):
        rows = [json.loads(line)["output"] for line in path.read_text(encoding="utf-8").splitlines()]
        expected = rule.apply(result["fold_test"])
        assert [[row[label] == "True" for label in row] for row in rows] == expected.tolist(), path.name
    assert len(ids) == len(rows)
    refused = run_cli(
        "ensemble.py",
        "--runs",
        tiny_run,
        ngram_two_folds,
        "--strategy",
        "stack",
        "--output",
        fixed,
        "--thresholds",
        tiny_run / "thresholds.json",
        check=False,
    )
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
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        "ngram:tfidf",
        "--output_dir",
        three_folds,
    )
    refused = run_cli(
        "ensemble.py",
        "--runs",
        tiny_run,
        three_folds,
        "--strategy",
        "stack",
        "--output",
        tmp_path / "s.jsonl",
        check=False,
    )
    assert refused.returncode == 1 and "its folds differ" in refused.stderr
    assert not (tmp_path / "s.jsonl").exists()
    # a copied run is the same model twice: its duplicated features would raise the nested estimate for nothing
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    refused = run_cli(
        "ensemble.py", "--runs", tiny_run, copy, "--strategy", "stack", "--output", tmp_path / "c.jsonl", check=False
    )
    assert refused.returncode == 1 and "its out-of-fold probabilities are" in refused.stderr
    assert not (tmp_path / "c.jsonl").exists()
    # an output inside a stacked run would replace that run's own files
    fold_file = three_folds / "fold_0" / "val_probs.jsonl"
    before = fold_file.read_bytes()
    refused = run_cli(
        "ensemble.py", "--runs", tiny_run, three_folds, "--strategy", "stack", "--output", fold_file, check=False
    )
    assert refused.returncode == 1 and "which its command wrote" in refused.stderr and fold_file.read_bytes() == before
    for extra in (["--weights", "1", "2"], ["--strategy", "hard"]):
        args = ["--runs", tiny_run, three_folds, "--strategy", "stack", "--output", tmp_path / "s.jsonl", *extra]
        assert run_cli("ensemble.py", *args, check=False).returncode == 2
    with pytest.raises(PipelineError, match="not a finished train.py run"):
        RunMember.load(str(tmp_path / "nowhere"), ["r1"])


# the stack as a run: a folder inference.py --run and EmotionClassifier.from_pretrained serve ----------------------


@pytest.fixture
def command(capsys, monkeypatch):
    """A top-level command in-process (no interpreter start-up): (exit code, stdout, stderr)."""
    monkeypatch.chdir(ROOT)

    def run(script, *args):
        module = importlib.import_module(script)
        monkeypatch.setattr("sys.argv", [f"{script}.py", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            module.entry_point(module.main)()
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


def stack_into(command, folder, *runs):
    return command("ensemble", "--runs", *runs, "--strategy", "stack", "--output_dir", folder)


def test_a_stack_folder_serves_its_submission_and_new_files(tiny_run, ngram_two_folds, tmp_path, command):
    from nikl_emotion import EmotionClassifier
    from nikl_emotion.folders.folder_kind import folder_kind

    stack = tmp_path / "stack"
    code, log, _ = stack_into(command, stack, tiny_run, ngram_two_folds)
    assert code == 0
    assert "inference.py --run" in log and folder_kind(str(stack)) == "stack"
    recorded = json.loads((stack / "stack.json").read_text(encoding="utf-8"))
    assert [m["run"] for m in recorded["members"]] == [str(tiny_run.resolve()), str(ngram_two_folds.resolve())]
    # the encoder's validation rows chose its epochs, the n-gram's chose nothing: the stack says it fitted on both
    assert [m["oof_exposure"] for m in recorded["members"]] == ["chose_epoch", "unseen"]
    assert recorded["oof_exposure"] == "chose_epoch" and "chose each fold's epoch (optimistic" in log
    assert len(recorded["stacker"]) == 8 and all(
        len(label.get("weights", [0, 0])) == 2 for label in recorded["stacker"]
    )
    # the members' test file: the stack's own submission, byte for byte
    again = tmp_path / "again.jsonl"
    assert command("inference", "--run", stack, "--input", SAMPLE_TEST, "--output", again, "--device", "cpu")[0] == 0
    assert again.read_bytes() == (stack / "submission.jsonl").read_bytes()
    # another file: a valid submission of its rows
    other = tmp_path / "other.jsonl"
    assert command("inference", "--run", stack, "--input", SAMPLE_TRAIN, "--output", other, "--device", "cpu")[0] == 0
    rows = [json.loads(line) for line in other.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == load_jsonl(SAMPLE_TRAIN)["id"]
    assert all(sorted(r["output"]) == sorted(LABELS) and "True" in r["output"].values() for r in rows)
    # from Python: the same decisions, the same mean probabilities as the folder's test_probs.jsonl
    classifier = EmotionClassifier.from_pretrained(stack, device="cpu")
    submitted = [
        json.loads(line)["output"] for line in (stack / "submission.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert classifier.predict(SAMPLE_TEST).tolist() == [[row[label] == "True" for label in LABELS] for row in submitted]
    np.testing.assert_allclose(
        classifier.predict_proba(SAMPLE_TEST), read_probs(stack / "test_probs.jsonl")[1], atol=1e-5
    )


def test_the_stack_applies_its_saved_weights_to_each_fold(tiny_run, ngram_two_folds, tmp_path, command):
    """Fold K of the stack = the logistic function of the members' fold-K logits under the saved weights (an
    independent formula), voted by the saved rule."""
    from nikl_emotion.decisions.voting import DecisionRule

    stack = tmp_path / "stack"
    assert stack_into(command, stack, tiny_run, ngram_two_folds)[0] == 0
    recorded = json.loads((stack / "stack.json").read_text(encoding="utf-8"))
    folds = []
    for k in range(2):
        members = [read_probs(run / f"fold_{k}" / "test_probs.jsonl")[1] for run in (tiny_run, ngram_two_folds)]
        logit = [np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6))) for p in members]
        columns = []
        for j, label in enumerate(recorded["stacker"]):
            if "constant" in label:
                columns.append(np.full(len(members[0]), label["constant"]))
            else:
                z = sum(w * logit[m][:, j] for m, w in enumerate(label["weights"])) + label["bias"]
                columns.append(1 / (1 + np.exp(-z)))
        folds.append(np.stack(columns, axis=1))
    rule = DecisionRule.load(str(stack / "decision.json"))
    submitted = [
        json.loads(line)["output"] for line in (stack / "submission.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert rule.apply(folds).tolist() == [[row[label] == "True" for label in LABELS] for row in submitted]


def test_a_moved_or_changed_member_is_refused_by_name(tiny_run, ngram_two_folds, tmp_path, command):
    import shutil

    tree = tmp_path / "tree"
    member = tree / "ngram"
    shutil.copytree(ngram_two_folds, member)
    stack = tree / "stack"
    assert stack_into(command, stack, tiny_run, member)[0] == 0
    out = tmp_path / "out.jsonl"

    def serve(folder):
        return command("inference", "--run", folder, "--input", SAMPLE_TEST, "--output", out, "--device", "cpu")

    # moved together with its member (one tree): still the same stack
    moved_tree = tmp_path / "moved"
    tree.rename(moved_tree)
    assert serve(moved_tree / "stack")[0] == 0
    # the member moved away from the stack: refused, naming it
    (moved_tree / "ngram").rename(tmp_path / "elsewhere")
    out.unlink()
    code, _, error = serve(moved_tree / "stack")
    assert code == 1 and "ngram is not there" in error and not out.exists()
    # the member back in place, but trained again (its files changed): refused
    (tmp_path / "elsewhere").rename(moved_tree / "ngram")
    probs = moved_tree / "ngram" / "fold_1" / "test_probs.jsonl"
    probs.write_text(probs.read_text(encoding="utf-8").replace("0.", "0.0", 1), encoding="utf-8")
    code, _, error = serve(moved_tree / "stack")
    assert code == 1 and "changed since the stack was made" in error
    assert "fold_1/test_probs.jsonl" in error and not out.exists()


def test_stack_folders_are_refused_where_they_would_mix(tiny_run, ngram_two_folds, tmp_path, command):
    from nikl_emotion import EmotionClassifier

    code, _, error = stack_into(command, tiny_run / "stack", tiny_run, ngram_two_folds)
    assert code == 1 and "lies inside" in error and not (tiny_run / "stack").exists()
    code, _, error = stack_into(command, ngram_two_folds, tiny_run, ngram_two_folds)
    assert code == 1 and "not an ensemble.py stack" in error
    code, _, _ = command(
        "ensemble",
        "--runs",
        tiny_run,
        ngram_two_folds,
        "--strategy",
        "stack",
        "--output_dir",
        tmp_path / "s",
        "--output",
        tmp_path / "s.jsonl",
    )
    assert code == 2 and not (tmp_path / "s").exists()
    unfinished = tmp_path / "unfinished"
    assert stack_into(command, unfinished, tiny_run, ngram_two_folds)[0] == 0
    (unfinished / "stack.json").unlink()
    with pytest.raises(PipelineError, match="not a finished stack"):
        EmotionClassifier.from_pretrained(unfinished)
