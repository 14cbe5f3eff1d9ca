"""The target-pooling head (`classifier_head: target_pool`): the pooled features against a per-row reference, the
target's tokens found in every input format and encoder family, checkpoints that load back exactly, and a run that
goes through train.py, inference.py --run, EmotionClassifier and ONNX export."""

import json

import numpy as np
import pytest
import torch
from conftest import ONE_FOLD, ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli
from hub_families import FAMILIES, build_family
from transformers import AutoConfig, AutoModel

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.backbone import build_offline_backbone, classification_config_kwargs, load_tokenizer
from nikl_emotion.backends.heads import (
    TargetPoolForSequenceClassification,
    build_classifier,
    load_trained_model,
    pool_target,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, tokenize_batch
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training

FORMATS = ("pair", "marker", "prompt")


def reference_features(states: np.ndarray, target_mask: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Row by row: the first state, then the mean and max over the target's attended positions (all attended
    positions when there are none)."""
    rows = []
    for h, target, attended in zip(states, target_mask, attention_mask):
        positions = [t for t in range(len(h)) if target[t] and attended[t]] or [t for t in range(len(h)) if attended[t]]
        chosen = h[positions]
        rows.append(np.concatenate([h[0], chosen.mean(axis=0), chosen.max(axis=0)]))
    return np.stack(rows)


def test_pool_target_matches_a_per_row_reference():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(4, 6, 5, generator=generator)
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    # row 1: target on a padded position too (ignored); row 2: no target (whole text); row 3: one token
    target = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]])
    pooled = pool_target(states, target, attention).numpy()
    np.testing.assert_allclose(pooled, reference_features(states.numpy(), target.numpy(), attention.numpy()), rtol=1e-6)
    # no target mask at all: every row pools its whole text
    np.testing.assert_allclose(
        pool_target(states, None, attention).numpy(),
        reference_features(states.numpy(), np.zeros((4, 6)), attention.numpy()),
        rtol=1e-6,
    )


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    """family -> (folder, tokenizer) for every hub family and the offline backbone."""
    root = tmp_path_factory.mktemp("families")
    folders = {name: build_family(name, root / name) for name in FAMILIES}
    texts = [row["text"] for row in load_jsonl(SAMPLE_TRAIN)] + [PROMPT_TEMPLATE]
    folders["offline"] = build_offline_backbone(texts, str(root / "offline"), "offline:electra-tiny", vocab_size=800)
    return folders


def masked_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m]).replace(" ", "").replace("▁", "")


@pytest.mark.parametrize("family", (*FAMILIES, "offline"))
def test_the_target_mask_marks_the_targets_tokens_in_every_format(tokenizers, family):
    rows = clean(load_jsonl(SAMPLE_DEV), Preprocessing(CleaningOptions()))
    batch = rows.select(range(40)).to_dict()
    assert any(t is None for t in batch["target"]) and any(batch["target"])
    for input_format in FORMATS:
        tokenizer = load_tokenizer(tokenizers[family], with_markers=input_format == "marker")
        out = tokenize_batch(batch, tokenizer, input_format, 64, target_mask=True)
        assert "offset_mapping" not in out
        for i, target in enumerate(batch["target"]):
            ids, mask = out["input_ids"][i], out["target_mask"][i]
            assert len(mask) == len(ids)
            special = set(tokenizer.all_special_ids)
            if target is None:  # the whole text: every token that is not special
                assert mask == [int(t not in special) for t in ids], (family, input_format, i)
                continue
            found = masked_text(tokenizer, ids, mask)
            # the target's tokens (a word piece may carry a particle on: 공연 in 공연이), and nothing far from it
            assert target.replace(" ", "") in found, (family, input_format, target, found)
            assert len(found) <= len(target.replace(" ", "")) + 4, (family, input_format, target, found)
            assert not any(m and t in special for t, m in zip(ids, mask))


def test_a_target_cut_off_by_truncation_is_read_where_the_input_still_spells_it(tokenizers):
    tokenizer = load_tokenizer(tokenizers["kcelectra"])
    text = "가나다 " * 40 + "공연 좋았다"
    begin = text.index("공연")
    batch = {"text": [text], "target": ["공연"], "target_begin": [begin], "target_end": [begin + 2]}
    for input_format in ("pair", "prompt"):
        out = tokenize_batch(batch, tokenizer, input_format, 24, target_mask=True)
        assert masked_text(tokenizer, out["input_ids"][0], out["target_mask"][0]) == "공연", input_format
    marker = load_tokenizer(tokenizers["kcelectra"], with_markers=True)
    out = tokenize_batch(batch, marker, "marker", 24, target_mask=True)  # the window around the target
    assert masked_text(marker, out["input_ids"][0], out["target_mask"][0]) == "공연"


@pytest.mark.parametrize("family", (*FAMILIES, "offline"))
def test_a_target_pool_model_keeps_the_pretrained_encoder_and_loads_back_exactly(tokenizers, family, tmp_path):
    folder = str(tokenizers[family])
    config = AutoConfig.from_pretrained(folder, **classification_config_kwargs())
    model = build_classifier(folder, config, "target_pool")
    assert isinstance(model, TargetPoolForSequenceClassification)
    encoder = AutoModel.from_pretrained(folder).state_dict()
    for name, weight in model.backbone.state_dict().items():  # every pretrained weight, none re-initialised
        assert torch.equal(encoder[name], weight), name
    assert getattr(model.backbone, "pooler", None) is None  # unread by the head: no parameter without a gradient
    tokenizer = load_tokenizer(folder)
    rows = clean(load_jsonl(SAMPLE_DEV).select(range(8)), Preprocessing(CleaningOptions()))
    preprocessing = Preprocessing(CleaningOptions(), classifier_head="target_pool", head_inputs=("target_mask",))
    encoded = encode(rows, tokenizer, preprocessing, on_unknown="warn")
    model.save_pretrained(tmp_path / "saved")
    loaded, info = load_trained_model(str(tmp_path / "saved"))
    assert not info["missing_keys"] and not info["unexpected_keys"]
    names = [*tokenizer.model_input_names, "target_mask"]
    batch = {
        name: torch.nn.utils.rnn.pad_sequence([torch.tensor(r[name]) for r in encoded], batch_first=True)
        for name in names
        if name in encoded.column_names
    }
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        # the mask matters: pooling the whole text instead gives other logits
        assert not torch.allclose(model(**{**batch, "target_mask": None}).logits, model(**batch).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_with_the_target_pool_head(tokenizers, family, tmp_path):
    out = tmp_path / "run"
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model_name_or_path",
                str(tokenizers[family]),
                "--output_dir",
                str(out),
                "--classifier_head",
                "target_pool",
                "--input_format",
                "marker" if family == "xlm-roberta" else "pair",
                *ONE_FOLD,
            ]
        )
    )
    best = out / "fold_0" / "best"
    assert json.loads((best / "config.json").read_text())["classifier_head"] == "target_pool"
    classifier = EmotionClassifier.from_pretrained(best, device="cpu")
    assert "target_mask" in classifier.runtime.input_names
    test_ids, test_probs = read_probs(out / "fold_0" / "test_probs.jsonl")
    np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), test_probs, atol=1e-5)


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "run"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "4",
        "--classifier_head",
        "target_pool",
        "--input_format",
        "prompt",
    )
    return out


def test_a_target_pool_run_serves_through_every_command(pooled_run, tmp_path):
    run_cli("inference.py", "--run", pooled_run, "--input", SAMPLE_TEST, "--output", tmp_path / "sub.jsonl")
    assert (tmp_path / "sub.jsonl").read_bytes() == (pooled_run / "submission.jsonl").read_bytes()
    best = pooled_run / "fold_1" / "best"
    card = (best / "README.md").read_text(encoding="utf-8")
    assert "target_pool" in card and "cannot load it" in card and 'pipeline("text-classification"' not in card
    probs = EmotionClassifier.from_pretrained(best, device="cpu").predict_proba(SAMPLE_DEV)
    pytest.importorskip("onnxruntime")
    run_cli("export.py", "--checkpoint", best, "--output", tmp_path / "onnx")
    onnx = EmotionClassifier.from_pretrained(tmp_path / "onnx")
    assert "target_mask" in onnx.runtime.input_names
    assert np.abs(onnx.predict_proba(SAMPLE_DEV) - probs).max() <= 1e-5


def test_a_checkpoint_whose_files_disagree_on_the_head_is_refused(pooled_run, tmp_path):
    import shutil

    best = tmp_path / "best"
    shutil.copytree(pooled_run / "fold_0" / "best", best)
    settings = json.loads((best / "preprocessing.json").read_text())
    (best / "preprocessing.json").write_text(json.dumps({**settings, "classifier_head": "cls"}))
    with pytest.raises(PipelineError, match="classifier_head is target_pool but preprocessing.json's is cls"):
        EmotionClassifier.from_pretrained(best, device="cpu")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--input_format", "text"], "which input_format: text does not mark"),
        (["--model_name_or_path", "ngram:tfidf"], "ngram:tfidf is trained by the ngram backend, which builds no head"),
        (["--classifier_head", "mean"], "classifier_head: 'mean' is not cls or target_pool"),
    ],
)
def test_a_head_that_cannot_work_is_refused_before_any_work(overrides, message, tmp_path):
    with pytest.raises(PipelineError, match=message):
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--output_dir",
                str(tmp_path / "out"),
                "--classifier_head",
                "target_pool",
                *overrides,
            ]
        )


def test_a_target_pool_student_distils_a_run(tiny_run, tmp_path):
    student = tmp_path / "student"
    run_cli(
        "distill.py",
        ROOT / "configs" / "quickstart.yaml",
        "--teacher_run",
        tiny_run,
        "--output_dir",
        student,
        "--num_train_epochs",
        "2",
        "--classifier_head",
        "target_pool",
    )
    assert json.loads((student / "best" / "config.json").read_text())["classifier_head"] == "target_pool"
    _, test_probs = read_probs(student / "test_probs.jsonl")
    probs = EmotionClassifier.from_pretrained(student / "best", device="cpu").predict_proba(SAMPLE_TEST)
    np.testing.assert_allclose(probs, test_probs, atol=1e-5)
