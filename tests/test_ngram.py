"""The n-gram member (`ngram:tfidf`) goes through the same fold loop and artifact layer as an encoder."""

import json

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, nikl_row, run_cli, write_jsonl

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.ngram import NgramClassifier
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.decisions.metrics import decide, score
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training.config_checks import parse_config


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ngram") / "out"
    result = run_cli(
        "train.py", ROOT / "configs" / "quickstart.yaml", "--model_name_or_path", "ngram:tfidf", "--output_dir", out
    )
    return out, result.stdout + result.stderr  # its fold lines are logged (stderr), the table printed


def test_an_ngram_run_writes_a_normal_run_folder(ngram_run):
    out, log = ngram_run
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2] and "n-gram model fitted" in log
    for name in ("oof.jsonl", "thresholds.json", "decision.json", "report.md", "submission.jsonl", "config.yaml"):
        assert (out / name).exists(), name
    ids, oof = read_probs(out / "oof.jsonl")
    rows = load_jsonl(SAMPLE_TRAIN)
    assert ids == rows["id"] and ((oof >= 0) & (oof <= 1)).all()
    gold = np.asarray(rows["labels"])
    majority = np.zeros_like(gold)
    majority[:, gold.sum(axis=0).argmax()] = 1
    assert summary["oof"]["micro_f1"] > score(gold, majority)["micro_f1"] + 0.1  # it learned from the text
    best = out / "fold_0" / "best"
    assert (best / "ngram.joblib").exists() and (best / "preprocessing.json").exists()
    assert not (best / "README.md").exists()  # the Hugging Face model card is for encoders


def test_the_classifier_and_inference_read_an_ngram_checkpoint(ngram_run, tmp_path):
    out, _ = ngram_run
    classifier = EmotionClassifier.from_pretrained(out / "fold_1" / "best")
    assert classifier.reads_text and classifier.tokenizer is None
    _, written = read_probs(out / "fold_1" / "test_probs.jsonl")
    np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), written, atol=1e-6)
    assert classifier.predict(["정말 최고였다", "너무 슬프다"]).shape == (2, 8)
    with pytest.raises(PipelineError, match="reads text, not tokens"):
        classifier.encode(SAMPLE_TEST)
    rebuilt = tmp_path / "again.jsonl"
    run_cli("inference.py", "--run", out, "--input", SAMPLE_TEST, "--output", rebuilt)
    assert rebuilt.read_bytes() == (out / "submission.jsonl").read_bytes()


def test_a_label_with_one_class_gets_its_constant_rate(tmp_path):
    rows = [
        nikl_row(f"r{i}", form=text, target=None, labels=labels)
        for i, (text, labels) in enumerate(
            [
                ("오늘 공연 너무 좋았다", ("joy",)),
                ("정말 화가 난다", ("anger",)),
                ("공연 최고 좋았다", ("joy",)),
                ("진짜 화난다 짜증", ("anger",)),
            ]
            * 3
        )
    ]
    train = load_jsonl(write_jsonl(tmp_path / "t.jsonl", rows))
    model = NgramClassifier().fit(train)
    probs = model.predict_proba(load_jsonl(SAMPLE_DEV).select(range(5)))
    assert probs.shape == (5, 8) and (probs[:, 2] == 0.0).all()  # trust never occurs: probability 0, no regression
    np.testing.assert_array_equal(decide(model.predict_proba(train)).argmax(axis=1)[:4], [0, 6, 0, 6])


def test_commands_that_need_an_encoder_refuse_it(tmp_path):
    config = [
        str(ROOT / "configs" / "quickstart.yaml"),
        "--model_name_or_path",
        "ngram:tfidf",
        "--output_dir",
        str(tmp_path / "o"),
    ]
    from nikl_emotion.training.hp_search import parse_search_config, run_hp_search

    with pytest.raises(PipelineError, match="the ngram backend, which offers no search"):
        run_hp_search(parse_search_config(config), 2)
    with pytest.raises(PipelineError, match="unknown n-gram model 'ngram:bm25'"):
        parse_config([*config, "--model_name_or_path", "ngram:bm25"])
    refused = run_cli(
        "post_train.py",
        ROOT / "configs" / "post_train-offline.yaml",
        "--model_name_or_path",
        "ngram:tfidf",
        "--output_dir",
        tmp_path / "p",
        "--train_files",
        SAMPLE_TRAIN,
        check=False,
    )
    assert refused.returncode == 1 and "offers no post-training" in refused.stderr


def test_a_dtype_that_cannot_apply_to_an_ngram_model_is_said_not_silently_ignored(ngram_run, caplog):
    from nikl_emotion.backends.precision import LoadOptions
    from nikl_emotion.backends.registry import load_checkpoint

    out, _ = ngram_run
    with caplog.at_level("WARNING", logger="nikl_emotion"):
        auto = load_checkpoint(out / "fold_0" / "best").predict_proba(SAMPLE_TEST)
        assert not caplog.records
        bf16 = load_checkpoint(out / "fold_0" / "best", options=LoadOptions(dtype="bf16")).predict_proba(SAMPLE_TEST)
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "--dtype bf16 does not apply to an n-gram model (no weights in a dtype); ignored for it"
    ]
    np.testing.assert_array_equal(auto, bf16)


def test_the_context_view_reads_the_characters_around_the_target(tmp_path):
    from nikl_emotion.backends.ngram import _CONTEXT_CHARS, _columns

    text = "어제 본 영화가 정말 지루해서 화가 났다 그래도 배우는 좋았다"
    begin = text.index("영화")
    rows = [
        nikl_row("a", form=text, target=("영화", begin, begin + 2), labels=("anger",)),
        nikl_row("b", form="그냥 그렇다", target=None, labels=("joy",)),
    ]
    table = load_jsonl(write_jsonl(tmp_path / "t.jsonl", rows))
    columns = _columns(table, {"left": None, "right": None})
    assert columns["left"] == [text[max(0, begin - _CONTEXT_CHARS) : begin], ""]
    assert columns["right"] == [text[begin + 2 : begin + 2 + _CONTEXT_CHARS], ""]
    assert columns["target"] == ["영화", ""] and "morphemes" not in columns


def test_the_two_views_are_different_models_that_save_and_load(tmp_path):
    train, dev = load_jsonl(SAMPLE_TRAIN), load_jsonl(SAMPLE_DEV)
    context = NgramClassifier(features="context").fit(train)
    assert list(context.vectorizers) == ["text", "left", "right", "target"]
    probs = context.predict_proba(dev)
    assert probs.shape == (len(dev), 8) and not np.allclose(probs, NgramClassifier().fit(train).predict_proba(dev))
    context.save(tmp_path / "best")
    info = json.loads((tmp_path / "best" / "ngram.json").read_text(encoding="utf-8"))
    assert info["model"] == "ngram:context"
    np.testing.assert_array_equal(NgramClassifier.load(tmp_path / "best").predict_proba(dev), probs)


def test_a_model_saved_before_the_views_loads_and_predicts_as_it_did(tmp_path):
    import joblib

    train, dev = load_jsonl(SAMPLE_TRAIN), load_jsonl(SAMPLE_DEV)
    model = NgramClassifier().fit(train)
    expected = model.predict_proba(dev)
    old = NgramClassifier.__new__(NgramClassifier)  # the attributes the class kept before `features`
    old.__dict__.update({"c": model.c, "max_features": model.max_features, "seed": model.seed, "morphemes": True})
    old.__dict__.update({f"{name}_features": model.vectorizers[name] for name in ("text", "target")})
    old.__dict__.update({"morpheme_features": model.vectorizers["morphemes"], "models": model.models})
    joblib.dump(old, tmp_path / "old.joblib")
    loaded = joblib.load(tmp_path / "old.joblib")
    assert loaded.features == "tfidf" and list(loaded.vectorizers) == ["text", "morphemes", "target"]
    np.testing.assert_array_equal(loaded.predict_proba(dev), expected)
