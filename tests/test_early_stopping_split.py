"""early_stopping_split: a share of each fold's training rows chooses the epoch, so the fold's validation rows (its
out-of-fold predictions) are unseen by every choice."""

import json

import pytest
from conftest import ROOT, SAMPLE_TRAIN, run_cli

from nikl_emotion.backends import encoder_fold, encoder_search
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.folds import hold_out, make_folds

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def spy_on_the_rows(monkeypatch, module) -> dict:
    """{"train": ids, "choosing": ids} of the last fold_trainer_inputs call in `module`: the rows a Trainer trained
    on and the rows that chose its epoch (or scored a search's trial)."""
    seen = {}
    inputs = module.fold_trainer_inputs

    def spied(train_rows, choosing_rows, tokenizer, settings):
        seen["train"], seen["choosing"] = list(train_rows["id"]), list(choosing_rows["id"])
        return inputs(train_rows, choosing_rows, tokenizer, settings)

    monkeypatch.setattr(module, "fold_trainer_inputs", spied)
    return seen


def test_the_epoch_is_chosen_on_training_rows_held_out_and_never_on_the_out_of_fold_rows(tmp_path, monkeypatch):
    seen = spy_on_the_rows(monkeypatch, encoder_fold)
    out = tmp_path / "run"
    result = run_cli(
        "train.py",
        QUICKSTART,
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "2",
        "--early_stopping_split",
        "0.2",
    )
    validation = {json.loads(line)["id"] for line in (out / "fold_1" / "val_probs.jsonl").open(encoding="utf-8")}
    everything = set(load_jsonl(SAMPLE_TRAIN)["id"])
    # fold 1 (the last trained): its epoch was chosen on rows it did not train on, and not on its validation rows
    train, choosing = set(seen["train"]), set(seen["choosing"])
    assert not choosing & validation and not choosing & train
    assert train | choosing == everything - validation
    assert abs(len(choosing) / len(everything - validation) - 0.2) < 0.02  # stratified: about the share
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epoch_chosen_on"] == "early_stopping_split"
    assert metrics["choosing_rows"] == len(seen["choosing"]) and metrics["train_rows"] == len(seen["train"])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["oof_exposure"] == "unseen" and "out-of-fold rows unseen by every choice" in result.stdout


def test_without_it_the_validation_rows_choose_and_the_run_says_so(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert summary["oof_exposure"] == "chose_epoch"
    metrics = json.loads((tiny_run / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epoch_chosen_on"] == "validation_rows"


def test_a_search_with_the_split_scores_its_trials_on_the_held_out_rows_the_run_chooses_its_epoch_on(
    tmp_path, monkeypatch
):
    seen = spy_on_the_rows(monkeypatch, encoder_search)
    out = tmp_path / "hp"
    args = ["--output_dir", out, "--num_folds", "2", "--num_train_epochs", "1", "--fold", "1"]
    result = run_cli("train.py", QUICKSTART, "--hp-search", "1", *args, "--early_stopping_split", "0.2")
    # the rows the run itself holds out of fold 1 (seed 42 + fold), computed here from the split functions
    rows = load_jsonl(SAMPLE_TRAIN)
    ids, labels = rows["id"], rows["labels"]
    train_index, validation_index = make_folds(labels, 2, 42)[1]
    kept, held = hold_out(train_index, labels, 0.2, 42 + 1)
    assert sorted(seen["choosing"]) == sorted(ids[i] for i in held)
    assert sorted(seen["train"]) == sorted(ids[i] for i in kept)
    assert not set(seen["choosing"]) & {ids[i] for i in validation_index}  # fold 1's out-of-fold rows stay unseen
    assert "on the early_stopping_split rows held out of the fold's training rows" in result.stdout
    header = (out / "hp_search_best.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header.endswith("on fold 1: the early_stopping_split rows held out of the fold's training rows")

    run_cli("train.py", QUICKSTART, "--hp-search", "1", *args[:1], tmp_path / "hp0", *args[2:])
    assert sorted(seen["choosing"]) == sorted(ids[i] for i in validation_index)  # without it: today's rows


@pytest.mark.parametrize("value", ["0.5", "-0.1", "nan"])
def test_a_share_outside_0_to_half_is_refused(value, tmp_path):
    with pytest.raises(PipelineError, match="early_stopping_split"):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "o"), "--early_stopping_split", value])


def test_a_backend_that_chooses_no_epoch_refuses_it(tmp_path):
    with pytest.raises(PipelineError, match="early_stopping_split: ngram:tfidf chooses no epoch"):
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                "ngram:tfidf",
                "--output_dir",
                str(tmp_path / "o"),
                "--early_stopping_split",
                "0.1",
            ]
        )
