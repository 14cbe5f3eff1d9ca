"""Decoder LLM backbones (polyglot-ko, Llama-family, Qwen2, Gemma imitations from tests/decoder_families.py) train
through the same folds as classifiers on their last token, in full or with LoRA, and serve through every command."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli
from decoder_families import DECODER_FAMILIES, build_decoder
from transformers import AutoModelForSequenceClassification, TrainingArguments, pipeline

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.backbone import load_tokenizer
from nikl_emotion.backends.decoder_backend import new_decoder_model
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.base.config import ModelArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.base.labels import LABELS
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.encoding import fill_template
from nikl_emotion.text.preprocessing import clean
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
DECODER = [
    "--input_format",
    "instruction",
    "--per_device_train_batch_size",
    "16",
    "--disable_tqdm",
    "true",
    "--save_total_limit",
    "1",
    "--learning_rate",
    "2e-3",
]
LORA = ["--lora_r", "4", "--lora_alpha", "8"]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("decoders")
    return {name: build_decoder(name, root / name) for name in DECODER_FAMILIES}


def train(decoder, out, *extra):
    run_training(
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                str(decoder),
                "--output_dir",
                str(out),
                "--num_folds",
                "2",
                *DECODER,
                *extra,
            ]
        )
    )
    return out


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_every_family_trains_with_lora_and_serves_from_its_adapter(decoders, family, tmp_path):
    assert backend_for(str(decoders[family])).name == "decoder"
    out = train(decoders[family], tmp_path / "run", "--fold", "0", "--num_train_epochs", "1", *LORA)
    best = out / "fold_0" / "best"
    adapter = json.loads((best / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(decoders[family]) and adapter["r"] == 4
    assert not (best / "model.safetensors").exists()  # the adapter and the head, not the base's weights
    classifier = EmotionClassifier.from_pretrained(best, device="cpu")
    _, test_probs = read_probs(out / "fold_0" / "test_probs.jsonl")
    np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), test_probs, atol=1e-5)
    # right-padded batches read each row's own last token: one batch of mixed lengths equals rows one at a time
    np.testing.assert_allclose(
        classifier.predict_proba(SAMPLE_DEV, batch_size=1),
        classifier.predict_proba(SAMPLE_DEV, batch_size=64),
        atol=1e-5,
    )


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_lora_trains_the_adapters_and_the_head_only(decoders, family):
    folder = str(decoders[family])
    tokenizer = load_tokenizer(folder)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    full = new_decoder_model(folder, tokenizer, ModelArguments(model_name_or_path=folder), args)
    lora = new_decoder_model(folder, tokenizer, ModelArguments(model_name_or_path=folder, lora_r=4), args)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or ".score." in name for name in trainable), trainable
    assert any(".score." in name for name in trainable)  # the head in full
    assert all(p.requires_grad for p in full.parameters())
    assert full.config.pad_token_id == tokenizer.pad_token_id is not None
    counted = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert counted < sum(p.numel() for p in full.parameters()) / 4


def test_merged_and_fully_fine_tuned_decoders_load_as_plain_transformers_models(decoders, tmp_path):
    merged = train(
        decoders["gemma"],
        tmp_path / "merged",
        "--fold",
        "0",
        "--num_train_epochs",
        "1",
        *LORA,
        "--merge_lora",
        "true",
        "--gradient_checkpointing",
        "true",
    )
    full = train(decoders["polyglot"], tmp_path / "full", "--fold", "0", "--num_train_epochs", "1")
    for out in (merged, full):
        best = out / "fold_0" / "best"
        assert not (best / "adapter_config.json").exists()
        model = AutoModelForSequenceClassification.from_pretrained(best)
        assert model.config.pad_token_id is not None
        _, test_probs = read_probs(out / "fold_0" / "test_probs.jsonl")
        classifier = EmotionClassifier.from_pretrained(best, device="cpu")
        np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), test_probs, atol=1e-5)
        # what the model card says: pipeline() on the filled-in template gives the same probabilities
        settings = classifier.preprocessing
        rows = clean(load_jsonl(SAMPLE_TEST, "optional").select(range(4)), settings)
        scorer = pipeline("text-classification", model=str(best), top_k=None, function_to_apply="sigmoid", device="cpu")
        for i, row in enumerate(rows):
            result = scorer(fill_template(settings.input_template, row["text"], row["target"]))
            result = result[0] if isinstance(result[0], list) else result  # a plain string comes back nested
            scored = {item["label"]: item["score"] for item in result}
            np.testing.assert_allclose([scored[label] for label in LABELS], test_probs[i], atol=1e-5)


@pytest.fixture(scope="module")
def lora_run(decoders, tmp_path_factory):
    """A finished 2-fold LoRA run of the Qwen2 imitation, on the same folds as `tiny_run`."""
    out = tmp_path_factory.mktemp("lora") / "run"
    run_cli(
        "train.py",
        QUICKSTART,
        "--model_name_or_path",
        decoders["qwen2"],
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "2",
        *DECODER,
        *LORA,
    )
    return out


def test_a_lora_run_serves_stacks_and_teaches(lora_run, tiny_run, tmp_path):
    run_cli("inference.py", "--run", lora_run, "--input", SAMPLE_TEST, "--output", tmp_path / "sub.jsonl")
    assert (tmp_path / "sub.jsonl").read_bytes() == (lora_run / "submission.jsonl").read_bytes()
    run_cli("ensemble.py", "--runs", lora_run, tiny_run, "--strategy", "stack", "--output_dir", tmp_path / "stack")
    run_cli("inference.py", "--run", tmp_path / "stack", "--input", SAMPLE_TEST, "--output", tmp_path / "stacked.jsonl")
    assert (tmp_path / "stacked.jsonl").read_bytes() == (tmp_path / "stack" / "submission.jsonl").read_bytes()
    # the cheap way to serve an LLM: a small encoder student of its soft targets
    student = tmp_path / "student"
    run_cli(
        "distill.py",
        QUICKSTART,
        "--teacher_run",
        lora_run,
        "--output_dir",
        student,
        "--num_train_epochs",
        "2",
        "--unlabelled_files",
        SAMPLE_DEV,
    )
    assert json.loads((student / "distill.json").read_text())
    assert (student / "best" / "model.safetensors").exists()


def test_a_killed_lora_fold_resumes_from_its_adapter_checkpoint(decoders, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "train.py",
        str(QUICKSTART),
        "--model_name_or_path",
        str(decoders["llama"]),
        "--output_dir",
        str(out),
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "12",
        "--early_stopping_patience",
        "0",
        *DECODER,
        *LORA,
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "fold_0" / "checkpoints"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if list(checkpoints.glob("checkpoint-*/trainer_state.json")) if checkpoints.exists() else []:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    saved = sorted(checkpoints.glob("checkpoint-*/adapter_model.safetensors"))
    assert saved, "a LoRA checkpoint holds the adapter"
    resumed = run_cli(*command[1:])
    assert "fold 0: resuming from checkpoint-" in resumed.stderr
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 12


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_train_one_lora_model(decoders, tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            "accelerate",
            "launch",
            "--multi_gpu",  # two CPU workers (use_cpu); `--cpu` would start one
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "train.py",
            str(QUICKSTART),
            "--model_name_or_path",
            str(decoders["polyglot"]),
            "--output_dir",
            str(out),
            "--num_folds",
            "2",
            "--fold",
            "0",
            "--num_train_epochs",
            "2",
            "--per_device_eval_batch_size",
            "16",
            *DECODER,
            *LORA,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))["processes"] == 2
    classifier = EmotionClassifier.from_pretrained(out / "fold_0" / "best", device="cpu")
    probs = classifier.predict_proba(SAMPLE_TRAIN)
    position = {row_id: i for i, row_id in enumerate(load_jsonl(SAMPLE_TRAIN)["id"])}
    val_ids, val_probs = read_probs(out / "fold_0" / "val_probs.jsonl")
    np.testing.assert_allclose(val_probs, probs[[position[i] for i in val_ids]], atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--model_name_or_path", "offline:electra-tiny", *LORA], "lora_r: LoRA is for decoder backbones"),
        (["--load_in_4bit", "true"], "load_in_4bit: applies to LoRA"),
        ([*LORA, "--merge_lora", "true", "--load_in_4bit", "true"], "merge_lora: cannot merge an adapter into 4-bit"),
        (["--classifier_head", "target_pool", "--input_format", "pair"], "the decoder backend, which builds cls"),
        (["--input_template", "{text} 감정?"], "input_template: must hold"),
    ],
)
def test_decoder_settings_that_cannot_work_are_refused(decoders, overrides, message, tmp_path):
    with pytest.raises(PipelineError, match=message):
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                str(decoders["llama"]),
                "--output_dir",
                str(tmp_path / "out"),
                *DECODER,
                *overrides,
            ]
        )


def test_the_bundled_decoder_config_parses_over_a_local_decoder(decoders):
    no_gpu = [] if torch.cuda.is_available() else ["--bf16", "false"]
    settings = parse_config(
        [
            str(ROOT / "configs" / "decoder-lora.yaml"),
            "--model_name_or_path",
            str(decoders["polyglot"]),
            "--train_files",
            str(SAMPLE_TRAIN),
            "--test_file",
            str(SAMPLE_TEST),
            *no_gpu,
        ]
    )
    assert settings.model.lora_r == 16 and settings.data.input_format == "instruction"


def qlora_args(decoder, out) -> list[str]:
    return [str(QUICKSTART), "--model_name_or_path", str(decoder), "--output_dir", str(out), *DECODER, *LORA]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize(
    ("installed", "message"),
    [(None, "4-bit base weights need bitsandbytes"), ("0.45.5", "on a CPU need bitsandbytes >= 0.50")],
)
def test_4bit_weights_without_what_runs_them_are_refused(decoders, tmp_path, monkeypatch, installed, message):
    import importlib.metadata
    import importlib.util

    find_spec, version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if installed is None and name == "bitsandbytes" else find_spec(name, *a),
    )
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: installed if name == "bitsandbytes" else version(name)
    )
    with pytest.raises(PipelineError, match=message):
        parse_config([*qlora_args(decoders["llama"], tmp_path / "out"), "--load_in_4bit", "true"])


def _bitsandbytes_packs_for_avx512_bf16() -> bool:
    """bitsandbytes' CPU 4-bit layers, on a CPU with AVX512-BF16, repack their weights for inference and require
    every output size divisible by 32: real decoders' are (2048, 8192, ...), the tiny imitation's are not."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16()) and not torch.cuda.is_available()


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed (pip install .[qlora])"
)
def test_qlora_trains_and_serves_its_fold_in_the_dtypes_it_trained(decoders, tmp_path):
    """QLoRA over the bf16-saved Llama imitation (NF4 base computing in bf16; on a CPU, bitsandbytes' CPU
    backend): best/ served by EmotionClassifier keeps, as training did, every weight outside the 4-bit layers in
    float32 (prepare_model_for_kbit_training), and reproduces the fold's probabilities within 2e-3: the weights are
    the fold's exactly, bitsandbytes' bf16 kernels round differently in a fresh process (4.8e-4 measured on CPU)."""
    if _bitsandbytes_packs_for_avx512_bf16():
        pytest.skip("this CPU has AVX512-BF16: bitsandbytes' packed 4-bit path needs layer sizes divisible by 32")
    out = tmp_path / "qlora"
    args = [*qlora_args(decoders["llama"], out), "--num_folds", "2", "--fold", "0", "--num_train_epochs", "1"]
    run_training(parse_config([*args, "--load_in_4bit", "true", "--bf16", "true"]))
    record = json.loads((out / "fold_0" / "best" / "loading.json").read_text())
    assert record["load_in_4bit"] and record["quantization"]["bnb_4bit_compute_dtype"] == "bfloat16"
    classifier = EmotionClassifier.from_pretrained(out / "fold_0" / "best", device="cpu")
    kept = {name: p.dtype for name, p in classifier.model.named_parameters() if "norm" in name or "embed" in name}
    assert kept and set(kept.values()) == {torch.float32}, kept
    position = {row_id: i for i, row_id in enumerate(load_jsonl(SAMPLE_TRAIN)["id"])}
    val_ids, val_probs = read_probs(out / "fold_0" / "val_probs.jsonl")
    served = classifier.predict_proba(SAMPLE_TRAIN)[[position[i] for i in val_ids]]
    np.testing.assert_allclose(served, val_probs, atol=2e-3)


def test_export_refuses_a_decoder_checkpoint(lora_run, tmp_path):
    result = run_cli(
        "export.py", "--checkpoint", lora_run / "fold_0" / "best", "--output", tmp_path / "onnx", check=False
    )
    assert result.returncode != 0 and "ONNX export is for encoders" in result.stderr
