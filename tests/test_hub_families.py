"""Every hub encoder family users bring works end to end: tiny local imitations of KcELECTRA, klue/roberta, KcBERT
and XLM-R (tests/hub_families.py) go through training in every input format, post-training, inference, ONNX export
and `pipeline()`. klue/roberta is the family that used to crash: its BERT tokenizer marks the second segment with
token type 1, and the model has one token type embedding."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import ONE_FOLD, ROOT, SAMPLE_DEV, SAMPLE_TRAIN, run_cli
from hub_families import FAMILIES, build_family, build_kcelectra
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.backbone import load_tokenizer
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.base.labels import LABELS
from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_file
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, TARGET_END, TARGET_START
from nikl_emotion.text.preprocessing import clean
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training
from nikl_emotion.training.post_training import parse_post_train_config, run_post_training

SEGMENTS = {"kcelectra": True, "klue-roberta": False, "kcbert": True, "xlm-roberta": False}


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hub")
    return {name: build_family(name, root / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def trained(families, tmp_path_factory) -> dict:
    """(family, input_format) -> the fold-0 best/ checkpoint of a one-epoch run on the sample data."""
    root = tmp_path_factory.mktemp("hub_runs")
    checkpoints = {}
    for family, path in families.items():
        for input_format in ("pair", "marker", "prompt"):
            out = root / f"{family}-{input_format}"
            run_training(
                parse_config(
                    [
                        str(ROOT / "configs" / "quickstart.yaml"),
                        "--model_name_or_path",
                        str(path),
                        "--output_dir",
                        str(out),
                        "--input_format",
                        input_format,
                        *ONE_FOLD,
                    ]
                )
            )
            checkpoints[family, input_format] = out / "fold_0" / "best"
    return checkpoints


def pipeline_input(row: dict, input_format: str):
    """What the model card (and README) tells a user to give `pipeline()` for a cleaned row in each format."""
    if row["target"] is None:
        return row["text"]
    if input_format == "pair":
        return {"text": row["text"], "text_pair": row["target"]}
    if input_format == "marker":
        begin, end = row["target_begin"], row["target_end"]
        return f"{row['text'][:begin]}{TARGET_START} {row['text'][begin:end]} {TARGET_END}{row['text'][end:]}"
    return {"text": PROMPT_TEMPLATE.format(target=row["target"]), "text_pair": row["text"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_input_format_trains_and_pipeline_scores_like_inference(trained, family):
    for input_format in ("pair", "marker", "prompt"):
        best = trained[family, input_format]
        metrics = json.loads((best.parent / "metrics.json").read_text(encoding="utf-8"))
        assert 0.0 <= metrics["micro_f1"] <= 1.0
        classifier = EmotionClassifier.from_pretrained(best, device="cpu")
        tokenizer = classifier.tokenizer
        # segment ids reach the model only when it has an embedding for them, and the saved tokenizer says so
        assert ("token_type_ids" in tokenizer.model_input_names) is SEGMENTS[family]
        saved = AutoTokenizer.from_pretrained(best)
        assert ("token_type_ids" in saved("오늘 공연", "공연")) is SEGMENTS[family]
        raw = load_jsonl(SAMPLE_DEV).select(range(12))
        rows = clean(raw, classifier.preprocessing)
        assert any(row["target"] is None for row in rows) and any(row["target"] for row in rows)
        expected = classifier.predict_proba(raw)
        hf_pipeline = pipeline(
            "text-classification", model=str(best), top_k=None, function_to_apply="sigmoid", device="cpu"
        )
        for i, row in enumerate(rows):
            result = hf_pipeline(pipeline_input(row, input_format))
            result = result[0] if isinstance(result[0], list) else result  # a plain string comes back nested
            scored = {item["label"]: item["score"] for item in result}
            np.testing.assert_allclose(
                [scored[label] for label in LABELS], expected[i], atol=1e-5, err_msg=f"{family} {input_format} row {i}"
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_traces_the_checkpoints_own_inputs(trained, family, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    best = trained[family, "pair"]
    run_cli("export.py", "--checkpoint", best, "--output", tmp_path / "onnx")
    inputs = [i.name for i in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.input]
    assert ("token_type_ids" in inputs) is SEGMENTS[family]
    predict_file(
        [str(best)],
        PredictionFiles(str(SAMPLE_DEV), str(tmp_path / "t.jsonl"), probs_path=str(tmp_path / "t_probs.jsonl")),
        loader=checkpoint_loader("cpu"),
    )
    predict_file(
        [str(tmp_path / "onnx")],
        PredictionFiles(str(SAMPLE_DEV), str(tmp_path / "o.jsonl"), probs_path=str(tmp_path / "o_probs.jsonl")),
    )
    torch_ids, torch_probs = read_probs(tmp_path / "t_probs.jsonl")
    onnx_ids, onnx_probs = read_probs(tmp_path / "o_probs.jsonl")
    assert onnx_ids == torch_ids and np.abs(onnx_probs - torch_probs).max() <= 1e-5


def test_klue_roberta_pair_runs_through_the_commands(families, tmp_path):
    """The reported crash, as a user meets it: train.py in the default pair format, then inference.py."""
    out = tmp_path / "run"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        families["klue-roberta"],
        "--output_dir",
        out,
        *ONE_FOLD,
    )
    result = run_cli(
        "inference.py",
        "--checkpoint",
        out / "fold_0" / "best",
        "--input",
        SAMPLE_DEV,
        "--output",
        tmp_path / "sub.jsonl",
        "--device",
        "cpu",
    )
    assert "wrote 100 rows" in result.stdout
    assert "unknown token" not in result.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_post_training_keeps_every_weight_the_classifier_uses(families, family, tmp_path):
    out = tmp_path / "post"
    run_post_training(
        parse_post_train_config(
            [
                str(ROOT / "configs" / "post_train-quickstart.yaml"),
                "--model_name_or_path",
                str(families[family]),
                "--output_dir",
                str(out),
                "--max_steps",
                "3",
                "--eval_strategy",
                "no",
                "--validation_fraction",
                "0",
                "--disable_tqdm",
                "true",
                "--whole_word_mask",
                "true",  # word offsets of WordPiece and SentencePiece alike
            ]
        )
    )
    assert (out / "post_train.json").exists()
    model, info = AutoModelForSequenceClassification.from_pretrained(out, num_labels=8, output_loading_info=True)
    assert {key.split(".")[0] for key in info["missing_keys"]} == {"classifier"}, info["missing_keys"]
    if family == "kcbert":  # the pretrained pooler, unchanged (the MLM loss never reaches it)
        original = AutoModelForSequenceClassification.from_pretrained(families[family], num_labels=8)
        assert torch.equal(model.bert.pooler.dense.weight, original.bert.pooler.dense.weight)
    assert ("token_type_ids" in AutoTokenizer.from_pretrained(out)("가", "나")) is SEGMENTS[family]
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model_name_or_path",
                str(out),
                "--output_dir",
                str(tmp_path / "fine"),
                *ONE_FOLD,
            ]
        )
    )
    assert (tmp_path / "fine" / "fold_0" / "done.json").exists()


def test_an_unfinished_post_training_folder_is_refused_by_name(families, tmp_path):
    out = tmp_path / "post"
    argv = [
        str(ROOT / "configs" / "post_train-quickstart.yaml"),
        "--model_name_or_path",
        str(families["kcelectra"]),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--eval_strategy",
        "no",
        "--validation_fraction",
        "0",
    ]
    run_post_training(parse_post_train_config(argv))
    (out / "post_train.json").unlink()  # as after a kill: everything but the summary, which is written last
    result = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        out,
        "--output_dir",
        tmp_path / "fine",
        check=False,
    )
    assert result.returncode == 1 and str(out) in result.stderr and "unfinished post-training" in result.stderr
    assert not (tmp_path / "fine").exists()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in ("config.json", "model.safetensors"):  # killed before the model was saved
        (out / name).unlink()
    with pytest.raises(PipelineError, match="unfinished post-training"):
        parse_config([str(ROOT / "configs" / "quickstart.yaml"), "--model_name_or_path", str(out)])
    with pytest.raises(PipelineError, match="not a Hugging Face model folder"):
        parse_config([str(ROOT / "configs" / "quickstart.yaml"), "--model_name_or_path", str(tmp_path)])


def test_a_lowercasing_bert_tokenizer_keeps_hangul_and_says_so(tmp_path, caplog):
    folder = build_kcelectra(tmp_path / "kcelectra-no-case-key", do_lower_case=None)
    plain = AutoTokenizer.from_pretrained(folder)
    text = load_jsonl(SAMPLE_TRAIN)[0]["text"]
    tokens = plain.tokenize(text)
    assert tokens.count(plain.unk_token) > len(tokens) / 2  # what transformers does with this folder by itself
    with caplog.at_level(logging.WARNING, logger="nikl_emotion.backends.backbone"):
        fixed = load_tokenizer(str(folder))
    assert fixed.unk_token not in fixed.tokenize(text)
    assert "splits Hangul" in caplog.text and "strip_accents" in caplog.text
    out = tmp_path / "run"
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model_name_or_path",
                str(folder),
                "--output_dir",
                str(out),
                *ONE_FOLD,
            ]
        )
    )
    saved = AutoTokenizer.from_pretrained(out / "fold_0" / "best")  # what pipeline() loads
    assert saved.tokenize(text) == fixed.tokenize(text)


def english_only(folder, tmp_path):
    """A copy of `folder` whose vocabulary has no Hangul (same ids, so the weights still fit)."""
    copy = tmp_path / "english"
    shutil.copytree(folder, copy)

    def rename(token: str, i: int) -> str:
        return token if token.startswith("[") else f"w{i}"

    if (copy / "tokenizer.json").exists():
        data = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
        data["model"]["vocab"] = {rename(token, i): i for token, i in data["model"]["vocab"].items()}
        (copy / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    else:
        vocab = (copy / "vocab.txt").read_text(encoding="utf-8").splitlines()
        (copy / "vocab.txt").write_text("\n".join(rename(t, i) for i, t in enumerate(vocab)) + "\n", encoding="utf-8")
    return copy


def test_an_unknown_token_flood_stops_training_and_warns_at_inference(families, trained, tmp_path, caplog):
    folder = english_only(families["kcbert"], tmp_path)
    with pytest.raises(PipelineError, match=r"\d+\.\d% of the \d+ tokens .* unknown token \[UNK\].*vocabulary"):
        run_training(
            parse_config(
                [
                    str(ROOT / "configs" / "quickstart.yaml"),
                    "--model_name_or_path",
                    str(folder),
                    "--output_dir",
                    str(tmp_path / "run"),
                    *ONE_FOLD,
                ]
            )
        )
    best = english_only(trained["kcbert", "pair"], tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="nikl_emotion.text.preprocessing"):
        predict_file(
            [str(best)], PredictionFiles(str(SAMPLE_DEV), str(tmp_path / "sub.jsonl")), loader=checkpoint_loader("cpu")
        )
    assert "unknown token [UNK]" in caplog.text and (tmp_path / "sub.jsonl").exists()


def test_max_seq_length_beyond_the_models_positions_is_refused(families, tmp_path):
    assert AutoConfig.from_pretrained(families["kcbert"]).max_position_embeddings == 300
    with pytest.raises(PipelineError, match="max_seq_length: 400 is more than the 300 tokens"):
        run_training(
            parse_config(
                [
                    str(ROOT / "configs" / "quickstart.yaml"),
                    "--model_name_or_path",
                    str(families["kcbert"]),
                    "--output_dir",
                    str(tmp_path / "run"),
                    "--max_seq_length",
                    "400",
                    *ONE_FOLD,
                ]
            )
        )
    with pytest.raises(PipelineError, match="max_seq_length: 513 is more than the 512 tokens"):
        run_training(
            parse_config(
                [
                    str(ROOT / "configs" / "quickstart.yaml"),
                    "--model_name_or_path",
                    str(families["klue-roberta"]),
                    "--output_dir",
                    str(tmp_path / "run2"),
                    "--max_seq_length",
                    "513",
                    *ONE_FOLD,
                ]
            )
        )


ALL_TECHNIQUES = [
    "--layerwise_lr_decay",
    "0.8",
    "--ema_decay",
    "0.9",
    "--swa_epochs",
    "1",
    "--rdrop_alpha",
    "1.0",
    "--multi_sample_dropout",
    "3",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_fine_tuning_technique_trains_each_family(families, family, tmp_path):
    """LLRD, EMA + SWA, R-Drop, multi-sample dropout and FGM or AWP together on each family's real layout; the saved
    best/
    is a plain checkpoint of the family that predicts exactly what the fold reported for its validation rows."""
    out = tmp_path / "run"
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model_name_or_path",
                str(families[family]),
                "--output_dir",
                str(out),
                *ONE_FOLD,
                "--num_train_epochs",
                "2",
                *ALL_TECHNIQUES,
                "--adversarial",
                "fgm" if family in ("kcelectra", "kcbert") else "awp",
            ]
        )
    )
    best = out / "fold_0" / "best"
    _, info = AutoModelForSequenceClassification.from_pretrained(best, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    val_ids, val_probs = read_probs(out / "fold_0" / "val_probs.jsonl")
    all_probs = EmotionClassifier.from_pretrained(best, device="cpu").predict_proba(str(SAMPLE_TRAIN))
    position = {row_id: i for i, row_id in enumerate(load_jsonl(SAMPLE_TRAIN)["id"])}
    np.testing.assert_allclose(all_probs[[position[i] for i in val_ids]], val_probs, atol=1e-5)
