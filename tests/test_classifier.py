"""EmotionClassifier: one object for a checkpoint or its ONNX export, the path every prediction goes through."""

import json

import numpy as np
import pytest
from conftest import SAMPLE_DEV, SAMPLE_TEST, run_cli

from nikl_emotion import EmotionClassifier
from nikl_emotion.base.errors import PipelineError, RowError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.decisions.metrics import decide
from nikl_emotion.text.data import load_jsonl, records_table


def test_the_fold_loop_predicts_through_the_classifier_of_its_saved_checkpoint(tiny_run):
    # the test probabilities the run wrote are what the saved best/ gives through from_pretrained
    for k in range(2):
        ids, written = read_probs(tiny_run / f"fold_{k}" / "test_probs.jsonl")
        classifier = EmotionClassifier.from_pretrained(tiny_run / f"fold_{k}" / "best", device="cpu")
        assert not classifier.is_onnx and classifier.model is not None
        np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), written, atol=1e-6)
        assert ids == load_jsonl(SAMPLE_TEST, "optional")["id"]


def test_rows_can_be_a_file_a_dataset_task_rows_or_plain_texts(tiny_run):
    classifier = EmotionClassifier.from_pretrained(tiny_run / "fold_0" / "best", device="cpu")
    dataset = load_jsonl(SAMPLE_DEV).select(range(20))
    records = [json.loads(line) for line in SAMPLE_DEV.read_text(encoding="utf-8").splitlines()[:20]]
    from_file = classifier.predict_proba(SAMPLE_DEV)[:20]
    assert from_file.shape == (20, 8) and ((from_file >= 0) & (from_file <= 1)).all()
    np.testing.assert_allclose(classifier.predict_proba(dataset), from_file, atol=1e-6)
    np.testing.assert_allclose(classifier.predict_proba(records), from_file, atol=1e-6)
    # a plain text is a row without a target
    untargeted = [{**r, "input": {**r["input"], "target": None}} for r in records]
    texts = [r["input"]["form"] for r in records]
    np.testing.assert_allclose(classifier.predict_proba(texts), classifier.predict_proba(untargeted), atol=1e-6)
    # batch size and the length sort change nothing but speed
    np.testing.assert_allclose(classifier.predict_proba(dataset, batch_size=3), from_file, atol=1e-5)
    thresholds = np.linspace(0.3, 0.7, 8)
    np.testing.assert_array_equal(classifier.predict(dataset, threshold=thresholds), decide(from_file, thresholds))


def test_onnx_export_is_the_same_classifier(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    best, export = tiny_run / "fold_0" / "best", tmp_path / "onnx"
    run_cli("export.py", "--checkpoint", best, "--output", export)
    pytorch = EmotionClassifier.from_pretrained(best, device="cpu")
    onnx = EmotionClassifier.from_pretrained(export)
    assert onnx.is_onnx and onnx.model is None and onnx.preprocessing == pytorch.preprocessing
    np.testing.assert_allclose(onnx.predict_proba(SAMPLE_DEV), pytorch.predict_proba(SAMPLE_DEV), atol=1e-5)
    with pytest.raises(PipelineError, match="already an ONNX export"):
        from nikl_emotion.backends.export import export_checkpoint

        export_checkpoint(str(export), str(tmp_path / "again"))


def test_shares_of_the_sorted_batches_add_up_to_every_row_once(tiny_run):
    # what each process of `accelerate launch` runs in the fold loop
    classifier = EmotionClassifier.from_pretrained(tiny_run / "fold_0" / "best", device="cpu")
    encoded = classifier.encode(SAMPLE_DEV)
    whole = classifier.predict_logits(encoded, batch_size=8)
    shares = [classifier.predict_logits(encoded, batch_size=8, part=p, parts=3) for p in range(3)]
    assert all((share != 0).any(axis=1).sum() < len(encoded) for share in shares)
    np.testing.assert_array_equal(np.sum(shares, axis=0), whole)


def test_bad_folders_and_rows_are_refused_by_name(tiny_run, tmp_path):
    with pytest.raises(PipelineError, match="checkpoint folder not found"):
        EmotionClassifier.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(RowError, match=r"<rows>:2: input\.form"):
        records_table(["좋다", {"id": "b", "input": {"form": "", "target": None}}])
    with pytest.raises(RowError, match=r"<rows>:2: id: duplicate id 'a'"):
        records_table([{"id": "a", "input": {"form": "좋다", "target": None}}] * 2)
    with pytest.raises(RowError, match="no rows"):
        records_table([])
