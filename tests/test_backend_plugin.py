"""A backend registered in a test alone: each label's training rate as every row's probability (`prior:rates`). It
trains through train.py, is served by inference.py --run and serve, and stacks with another run, with no change to
the package: what a backend is, as far as the programs that train and serve go (issue 48)."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_TEST, run_cli

from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.export import export_checkpoint
from nikl_emotion.backends.fold_backend import (
    FoldBackend,
    PreparedRun,
    SearchTrials,
    TrialFold,
    replace_best,
    write_fold_outputs,
)
from nikl_emotion.backends.registry import BACKENDS, backend_for, register_backend
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.run_folder import RunFolder
from nikl_emotion.runs.prediction import checkpoint_loader
from nikl_emotion.serving.served_model import ServedModel
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.preprocessing import Preprocessing
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.distillation import parse_distill_config
from nikl_emotion.training.folds import make_folds
from nikl_emotion.training.post_training import parse_post_train_config

RATES_FILE = "label_rates.json"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


class RatesRuntime:
    """Every row gets the label rates (it reads cleaned text, like the n-gram model, and ignores it)."""

    reads_text = True

    def __init__(self, rates):
        self.rates = np.asarray(rates, dtype=np.float32)

    def predict_rows(self, cleaned) -> np.ndarray:
        return np.tile(self.rates, (len(cleaned), 1))


class PriorBackend(FoldBackend):
    """The required methods alone: none of the abilities (techniques, search, export, ...) is offered."""

    name = "prior"

    def matches(self, model_name_or_path: str) -> bool:
        return model_name_or_path == "prior:rates"

    def prepare(self, settings, preprocessing, cleaned, cleaned_test, other_texts=()) -> PreparedRun:
        return PreparedRun(settings.model.model_name_or_path, None, cleaned, cleaned_test, lambda rows: rows)

    def train_fold(self, settings, data, folder=None) -> dict:
        folder = folder or RunFolder(settings.training.output_dir).fold(data.fold)
        rates = np.asarray(data.train_rows["labels"], dtype=np.float64).mean(axis=0)

        def save(path: str) -> None:
            os.makedirs(path)
            with open(os.path.join(path, RATES_FILE), "w", encoding="utf-8") as handle:
                json.dump(rates.tolist(), handle)

        replace_best(folder, data.preprocessing, save)
        val_probs = np.tile(rates, (len(data.val_index), 1))
        test = data.encoded_test
        test_probs = None if test is None else np.tile(rates, (len(test), 1))
        result = score(np.asarray(data.val_rows["labels"]), val_probs >= 0.5)
        result.update({"fold": data.fold, "best_checkpoint": None, "best_metric": result["micro_f1"]})
        result.update({"epochs_run": None, "train_rows": len(data.train_index), "pseudo_label_rows": 0})
        write_fold_outputs(folder, data.val_rows, val_probs, test, test_probs, result)
        return result

    def owns_checkpoint(self, folder: str) -> bool:
        return os.path.isfile(os.path.join(folder, RATES_FILE))

    def load_checkpoint(self, folder: str, device=None, threads=None, options=None) -> CheckpointClassifier:
        with open(os.path.join(folder, RATES_FILE), encoding="utf-8") as handle:
            rates = json.load(handle)
        return CheckpointClassifier(RatesRuntime(rates), None, Preprocessing.load(folder), source=folder)


class SmoothedPriorSearch(SearchTrials):
    """A search of the prior backend's own: how far the rates are pulled towards 0.5 (`label_smoothing`), scored
    by the micro-F1 of the smoothed rates on the rows that choose."""

    def suggest(self, trial, settings) -> dict:
        return {"label_smoothing": trial.suggest_float("label_smoothing", 0.0, 1.0)}

    def score(self, settings, prepared, data, output_dir) -> TrialFold:
        gold = np.asarray(data.choosing_rows["labels"]) > 0.5
        return TrialFold(gold, smoothed_rates(data.train_rows["labels"], settings.loss.label_smoothing, len(gold)))


def smoothed_rates(train_labels, smoothing: float, rows: int) -> np.ndarray:
    """The decisions of the training rows' label rates pulled towards 0.5 by `smoothing`, for `rows` rows: a label
    is on once its pulled rate reaches 0.25 (so each label switches at its own smoothing, and trials differ)."""
    rates = np.asarray(train_labels, dtype=np.float64).mean(axis=0)
    return np.tile(rates * (1 - smoothing) + 0.5 * smoothing, (rows, 1)) >= 0.25


class SearchablePriorBackend(PriorBackend):
    name = "searchable-prior"

    def matches(self, model_name_or_path: str) -> bool:
        return model_name_or_path == "prior:searchable"

    def search_trials(self) -> SearchTrials:
        return SmoothedPriorSearch()


@pytest.fixture
def prior_backend():
    backend = register_backend(PriorBackend())
    yield backend
    BACKENDS.remove(backend)


def test_a_backend_registered_in_a_test_trains_serves_and_stacks_unchanged(prior_backend, tmp_path):
    assert backend_for("prior:rates") is prior_backend and backend_for("klue/roberta-large").name == "encoder"
    with pytest.raises(ValueError, match="a name of its own"):
        register_backend(PriorBackend())
    with pytest.raises(TypeError, match="subclasses backends.fold_backend.FoldBackend"):
        register_backend(object())
    # what it does not offer is refused by name before any work
    with pytest.raises(PipelineError, match="prior:rates"):
        parse_config([str(QUICKSTART), "--model_name_or_path", "prior:rates", "--rdrop_alpha", "1.0"])
    with pytest.raises(PipelineError, match="lora_r: LoRA is for decoder backbones.*the prior backend"):
        parse_config([str(QUICKSTART), "--model_name_or_path", "prior:rates", "--lora_r", "4"])
    out = tmp_path / "prior"
    run_cli("train.py", QUICKSTART, "--model_name_or_path", "prior:rates", "--output_dir", out, "--num_folds", "2")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [fold["fold"] for fold in summary["folds"]] == [0, 1] and (out / "submission.jsonl").exists()
    # every row of a fold gets that fold's training rates: served back by inference.py --run as the run wrote them
    probs = tmp_path / "probs.jsonl"
    run_cli("inference.py", "--run", out, "--input", SAMPLE_TEST, "--output", tmp_path / "s.jsonl", "--probs", probs)
    mean = np.mean([read_probs(out / f"fold_{k}" / "test_probs.jsonl")[1] for k in (0, 1)], axis=0)
    np.testing.assert_allclose(read_probs(probs)[1], mean, atol=1e-6)
    assert (tmp_path / "s.jsonl").read_bytes() == (out / "submission.jsonl").read_bytes()
    assert np.ptp(read_probs(probs)[1], axis=0).max() < 1e-6  # the same rates for every row
    # and by the service's model, loaded once
    served = ServedModel(str(out), checkpoint_loader("cpu"))
    _, served_probs = served.predict([{"id": "a", "input": {"form": "공연이 좋았다", "target": None}}])
    np.testing.assert_allclose(served_probs[0], mean[0], atol=1e-6)
    # a stack over it and an n-gram run on the same folds
    ngram = tmp_path / "ngram"
    run_cli("train.py", QUICKSTART, "--model_name_or_path", "ngram:tfidf", "--output_dir", ngram, "--num_folds", "2")
    stack = tmp_path / "stack"
    run_cli("ensemble.py", "--runs", out, ngram, "--strategy", "stack", "--output_dir", stack)
    assert len(load_jsonl(stack / "submission.jsonl", "optional")) == len(load_jsonl(SAMPLE_TEST, "optional"))


def test_what_a_backend_does_not_offer_is_refused_by_each_program_and_what_it_offers_is_its_own(
    prior_backend, tmp_path
):
    prior = ["--model_name_or_path", "prior:rates"]
    refused = run_cli("train.py", QUICKSTART, *prior, "--output_dir", tmp_path / "hp", "--hp-search", "2", check=False)
    assert refused.returncode == 1 and "the prior backend, which offers no search" in refused.stderr
    assert not (tmp_path / "hp").exists()
    post_train_config = ROOT / "configs" / "post_train-quickstart.yaml"
    with pytest.raises(PipelineError, match="the prior backend, which offers no post-training"):
        parse_post_train_config([str(post_train_config), *prior, "--output_dir", str(tmp_path / "post")])
    run = tmp_path / "prior"
    run_cli("train.py", QUICKSTART, *prior, "--output_dir", run, "--num_folds", "2")
    with pytest.raises(PipelineError, match="the prior backend, which cannot be a student"):
        parse_distill_config(
            [str(QUICKSTART), *prior, "--teacher_run", str(run), "--output_dir", str(tmp_path / "student")]
        )
    with pytest.raises(PipelineError, match="ONNX export is for encoders; a prior checkpoint"):
        export_checkpoint(str(run / "fold_0" / "best"), str(tmp_path / "onnx"))
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "student").exists()
    # a backend that offers a search gets its own trials: train.py --hp-search runs them, not an encoder's
    searchable = register_backend(SearchablePriorBackend())
    try:
        out, pooled = tmp_path / "search", tmp_path / "pooled"
        argv = ["--model_name_or_path", "prior:searchable", "--num_folds", "2", "--hp-search"]
        result = run_cli("train.py", QUICKSTART, *argv, "6", "--output_dir", out)
        two_folds = ("--hp_folds", "0", "1", "--hp_pruner", "median")
        run_cli("train.py", QUICKSTART, *argv, "16", *two_folds, "--output_dir", pooled)
    finally:
        BACKENDS.remove(searchable)
    trials = read_table(out)
    assert len(trials) == 6 and set(trials[0]) == {"trial", "state", "micro_f1", "seconds", "worker", "label_smoothing"}
    assert "hp search: 6 trials on fold 0" in result.stdout
    # each trial's score is the smoothed rates' on fold 0's validation rows, recomputed here
    rows = load_jsonl(ROOT / "data" / "sample_train.jsonl")
    labels, folds = np.asarray(rows["labels"]), make_folds(rows["labels"], 2, 42)

    def expected(smoothing: float, fold_numbers) -> float:
        gold = np.concatenate([labels[folds[k][1]] for k in fold_numbers])
        decided = [smoothed_rates(labels[folds[k][0]], smoothing, len(folds[k][1])) for k in fold_numbers]
        return score(gold, np.concatenate(decided))["micro_f1"]

    for trial in trials:
        assert abs(float(trial["micro_f1"]) - expected(float(trial["label_smoothing"]), [0])) < 1e-6
    # over two folds: the pooled rows' micro-F1; a trial behind the median after fold 0 is stopped there
    trials = read_table(pooled)
    assert {trial["state"] for trial in trials} == {"COMPLETE", "PRUNED"}
    for trial in trials:
        if trial["state"] == "COMPLETE":
            assert abs(float(trial["micro_f1"]) - expected(float(trial["label_smoothing"]), [0, 1])) < 1e-6
    header = (pooled / "hp_search_best.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header.endswith("on folds 0, 1 pooled: the fold's validation rows")


def read_table(out) -> list[dict]:
    with (out / "hp_search.csv").open(encoding="utf-8") as table:
        return list(csv.DictReader(table))
