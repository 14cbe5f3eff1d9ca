"""The model-loading keys (trust_remote_code, attn_implementation, revision, model_dtype) reach every from_pretrained
of training and serving and are recorded in best/; settings that cannot work are refused before any work, sharded
training modes included."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_FOLD, ROOT, SAMPLE_TEST, run_main
from decoder_families import build_decoder
from hub_families import build_klue_roberta
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from nikl_emotion import EmotionClassifier
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
DECODER = ["--input_format", "instruction", "--learning_rate", "2e-3"]
LORA = ["--lora_r", "4", "--lora_alpha", "8"]
KEYS = ["--revision", "main", "--attn_implementation", "eager", "--trust_remote_code", "true"]
CUSTOM_CONFIG = """from transformers import LlamaConfig


class ExaoneTinyConfig(LlamaConfig):
    model_type = "exaone_tiny"
"""
CUSTOM_MODEL = """from torch import nn
from transformers import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, LlamaPreTrainedModel

from .configuration_exaone_tiny import ExaoneTinyConfig


class ExaoneTinyModel(LlamaModel):
    config_class = ExaoneTinyConfig


class ExaoneTinyForCausalLM(LlamaForCausalLM):
    config_class = ExaoneTinyConfig


class ExaoneTinyForSequenceClassification(LlamaForSequenceClassification):
    config_class = ExaoneTinyConfig

    def __init__(self, config):
        LlamaPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = ExaoneTinyModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loading")
    custom = build_decoder("llama", root / "custom")  # an EXAONE-style checkpoint: bf16, its own modelling code
    (custom / "configuration_exaone_tiny.py").write_text(CUSTOM_CONFIG)
    (custom / "modeling_exaone_tiny.py").write_text(CUSTOM_MODEL)
    config = json.loads((custom / "config.json").read_text())
    config.update(
        model_type="exaone_tiny",
        architectures=["ExaoneTinyForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_exaone_tiny.ExaoneTinyConfig",
            "AutoModelForCausalLM": "modeling_exaone_tiny.ExaoneTinyForCausalLM",
            "AutoModelForSequenceClassification": "modeling_exaone_tiny.ExaoneTinyForSequenceClassification",
        },
    )
    (custom / "config.json").write_text(json.dumps(config))
    return {
        "llama": build_decoder("llama", root / "llama"),
        "klue-roberta": build_klue_roberta(root / "klue"),
        "custom": custom,
    }


def train(model, out, *extra):
    run_training(
        parse_config([str(QUICKSTART), "--model_name_or_path", str(model), "--output_dir", str(out), *ONE_FOLD, *extra])
    )
    return out


def spy_on_loading(monkeypatch) -> list:
    """Every from_pretrained of a config, tokenizer or model: (class, path, keywords)."""
    calls = []
    for auto_class in (AutoConfig, AutoTokenizer, AutoModel, AutoModelForSequenceClassification):
        original = auto_class.from_pretrained

        def spy(path, *args, _original=original, _name=auto_class.__name__, **kwargs):
            calls.append((_name, str(path), kwargs))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(auto_class, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize(
    "family, extra", [("llama", [*DECODER, *LORA]), ("klue-roberta", ["--classifier_head", "target_pool"])]
)
def test_the_loading_keys_reach_every_from_pretrained_and_are_recorded(models, family, extra, tmp_path, monkeypatch):
    calls = spy_on_loading(monkeypatch)
    out = train(models[family], tmp_path / "run", *extra, *KEYS)
    of_the_model = [(name, kwargs) for name, path, kwargs in calls if path == str(models[family])]
    assert {name for name, _ in of_the_model} >= {"AutoConfig", "AutoTokenizer"} and len(of_the_model) >= 4
    for name, kwargs in of_the_model:
        assert kwargs.get("revision") == "main" and kwargs.get("trust_remote_code") is True, (name, kwargs)
        if name.startswith("AutoModel"):
            assert kwargs.get("attn_implementation") == "eager" and kwargs.get("dtype") is not None, (name, kwargs)
    best = out / "fold_0" / "best"
    record = json.loads((best / "loading.json").read_text())
    assert (record["revision"], record["attn_implementation"], record["trust_remote_code"]) == ("main", "eager", True)
    assert "attn_implementation: eager" in (out / "config.yaml").read_text()
    calls.clear()
    with pytest.raises(PipelineError, match="trust_remote_code"):  # recorded, never assumed when serving
        EmotionClassifier.from_pretrained(best, device="cpu")
    served = EmotionClassifier.from_pretrained(best, device="cpu", trust_remote_code=True)
    np.testing.assert_allclose(
        served.predict_proba(SAMPLE_TEST), read_probs(out / "fold_0" / "test_probs.jsonl")[1], atol=1e-5
    )
    assert served.model.config._attn_implementation == "eager"  # the kernel it trained with
    if family == "llama":  # the adapter's base is fetched at the revision it trained on
        assert any(path == str(models[family]) and kwargs.get("revision") == "main" for _, path, kwargs in calls)


def test_a_custom_code_decoder_needs_trust_remote_code_to_train_and_to_serve(models, tmp_path, capsys, monkeypatch):
    with pytest.raises(PipelineError, match="trust_remote_code: .* ships its own modelling code"):
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                str(models["custom"]),
                "--output_dir",
                str(tmp_path / "refused"),
                *DECODER,
            ]
        )
    assert not (tmp_path / "refused").exists()
    out = train(models["custom"], tmp_path / "run", *DECODER, "--trust_remote_code", "true")
    best = out / "fold_0" / "best"
    code, errors = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        best,
        "--input",
        SAMPLE_TEST,
        "--output",
        tmp_path / "no.jsonl",
    )
    assert (
        code == 1 and len(errors) == 1 and "--trust_remote_code" in errors[0] and not (tmp_path / "no.jsonl").exists()
    )
    code, _ = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        best,
        "--input",
        SAMPLE_TEST,
        "--output",
        tmp_path / "sub.jsonl",
        "--probs",
        tmp_path / "probs.jsonl",
        "--trust_remote_code",
    )
    assert code == 0
    np.testing.assert_allclose(
        read_probs(tmp_path / "probs.jsonl")[1], read_probs(out / "fold_0" / "test_probs.jsonl")[1], atol=1e-5
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--attn_implementation", "flash"], "attn_implementation: 'flash' is not eager, sdpa"),
        (["--model_dtype", "bfloat16"], "model_dtype: bfloat16 names the dtype of a frozen LoRA base"),
        (["--model_dtype", "half", *LORA], "model_dtype: 'half' is not auto, float32"),
        ([*LORA, "--lora_target_modules", "nosuch"], "lora_target_modules: nosuch names no module of .*q_proj"),
        (["--fsdp", "full_shard"], "fsdp: accelerate applies FSDP on GPUs only.*ZeRO-3"),
    ],
)
def test_loading_and_sharding_settings_that_cannot_work_are_refused_before_any_work(
    models, overrides, message, tmp_path
):
    with pytest.raises(PipelineError, match=message):
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                str(models["llama"]),
                "--output_dir",
                str(tmp_path / "out"),
                *DECODER,
                *overrides,
            ]
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash attention may be available with CUDA")
def test_an_attention_kernel_this_machine_lacks_is_one_error_line(models, tmp_path, capsys, monkeypatch):
    code, errors = run_main(
        capsys,
        monkeypatch,
        "train",
        QUICKSTART,
        "--model_name_or_path",
        models["llama"],
        "--output_dir",
        tmp_path / "out",
        *DECODER,
        "--attn_implementation",
        "flash_attention_2",
    )
    assert code == 1 and not (tmp_path / "out").exists()
    assert errors == [
        "error: attn_implementation: flash_attention_2 is not available here (a CUDA GPU and pip install flash-attn); "
        "use sdpa or eager"
    ]


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "fsdp: accelerate applies FSDP on GPUs only"),
    ],
)
def test_a_launcher_that_shards_the_weights_is_refused_before_any_work(environment, message, tmp_path, monkeypatch):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PipelineError, match=message):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "out")])


@pytest.mark.skipif(shutil.which("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_its_package_is_one_error_line(tmp_path, capsys, monkeypatch):
    code, errors = run_main(
        capsys,
        monkeypatch,
        "train",
        QUICKSTART,
        "--output_dir",
        tmp_path / "out",
        "--deepspeed",
        ROOT / "configs" / "deepspeed-zero2.json",
    )
    assert code == 1 and not (tmp_path / "out").exists()
    assert errors == [
        "error: deepspeed: needs the deepspeed package: pip install .[deepspeed] (a CUDA machine; see docs/models.md)"
    ]


def test_push_to_hub_pushes_each_folds_best_and_the_decision_files_never_checkpoints(tmp_path, monkeypatch):
    import sys
    import types

    import huggingface_hub

    pushed, finished = [], []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "upload_folder",
        lambda self, repo_id, folder_path, path_in_repo, **kw: pushed.append(
            (repo_id, path_in_repo, sorted(p.name for p in Path(folder_path).iterdir()))
        ),
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: pushed.extend(
            (repo_id, operation.path_in_repo, None) for operation in operations
        ),
    )
    # a tracker left open by a fold's Trainer is closed before the next fold starts: one tracking run per fold
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=object(), finish=lambda: finished.append(1)))
    out = tmp_path / "run"
    run_training(
        parse_config(
            [
                str(QUICKSTART),
                "--output_dir",
                str(out),
                "--num_folds",
                "2",
                "--num_train_epochs",
                "2",
                "--disable_tqdm",
                "true",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/nikl-ea",
            ]
        )
    )
    folders = {path: files for repo, path, files in pushed if files is not None}
    assert set(folders) == {"fold_0", "fold_1"} and {repo for repo, _, _ in pushed} == {"me/nikl-ea"}
    for files in folders.values():
        assert {"preprocessing.json", "loading.json", "README.md", "config.json", "model.safetensors"} <= set(files)
        assert not any(name.startswith("checkpoint") for name in files)
    assert {path for _, path, files in pushed if files is None} >= {"decision.json", "summary.json", "config.yaml"}
    assert len(finished) == 2


def test_each_fold_is_its_own_tracking_run_grouped_under_the_runs_name(monkeypatch):
    from transformers import TrainingArguments

    from nikl_emotion.backends.tracking import fold_trainer_settings

    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.delenv("MLFLOW_TAGS", raising=False)
    args = TrainingArguments(output_dir="outputs/kcelectra", report_to=[])
    args.report_to = ["wandb", "mlflow"]  # set after construction: neither package is installed here
    assert fold_trainer_settings(args, 3) == {"run_name": "kcelectra-fold3", "push_to_hub": False}
    assert os.environ["WANDB_RUN_GROUP"] == "kcelectra"
    assert json.loads(os.environ["MLFLOW_TAGS"]) == {"nikl_emotion.run": "kcelectra"}


def test_post_training_loads_the_hub_encoder_with_the_loading_keys_in_float32(models, tmp_path, monkeypatch):
    from transformers import AutoModelForMaskedLM

    from nikl_emotion.backends.masked_lm import mlm_model_and_tokenizer
    from nikl_emotion.base.config import ModelArguments
    from nikl_emotion.text.cleaning import CleaningOptions
    from nikl_emotion.text.preprocessing import Preprocessing

    calls = spy_on_loading(monkeypatch)
    original = AutoModelForMaskedLM.from_pretrained
    monkeypatch.setattr(
        AutoModelForMaskedLM,
        "from_pretrained",
        lambda path, *args, **kwargs: (
            calls.append(("AutoModelForMaskedLM", str(path), kwargs)) or original(path, *args, **kwargs)
        ),
    )
    folder = str(models["klue-roberta"])  # saved in fp16
    model_args = ModelArguments(
        model_name_or_path=folder, revision="main", attn_implementation="eager", trust_remote_code=True
    )
    model, _ = mlm_model_and_tokenizer(model_args, [], Preprocessing(CleaningOptions()), 0, str(tmp_path))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # every weight trains
    loads = [(name, kwargs) for name, path, kwargs in calls if path == folder]
    assert any(name == "AutoModelForMaskedLM" for name, _ in loads)
    for name, kwargs in loads:
        assert kwargs.get("revision") == "main" and kwargs.get("trust_remote_code") is True, (name, kwargs)
        if name.startswith("AutoModel"):
            assert kwargs.get("attn_implementation") == "eager" and kwargs.get("dtype") == torch.float32, (name, kwargs)


def test_a_flash_kernel_is_refused_for_float32_training_and_served_in_float32_with_sdpa(tmp_path, monkeypatch):
    """flash-attn computes in bf16/fp16 only: a float32 run would crash at its first forward pass, and a flash-trained
    best/ served in float32 (`--dtype fp32`, ONNX export) runs sdpa instead (where flash-attn is installed)."""
    from nikl_emotion.backends import backbone, classifier
    from nikl_emotion.backends.precision import LoadOptions, LoadRecord, ServingPrecision

    with pytest.raises(PipelineError, match="attn_implementation: flash_attention_2 computes in bf16/fp16 only"):
        parse_config(
            [str(QUICKSTART), "--output_dir", str(tmp_path / "o"), "--attn_implementation", "flash_attention_2"]
        )
    monkeypatch.setattr(classifier, "attention_kernel_available", lambda kernel: True)
    monkeypatch.setattr(backbone, "attention_kernel_available", lambda kernel: True)
    record = LoadRecord(autocast="bf16", attn_implementation="flash_attention_2")
    float32 = ServingPrecision(torch.float32, None)
    bf16 = ServingPrecision(torch.float32, torch.bfloat16)
    assert classifier.serving_loading("best", record, LoadOptions(), float32).attn_implementation == "sdpa"
    assert classifier.serving_loading("best", record, LoadOptions(), bf16).attn_implementation == "flash_attention_2"


def test_a_hub_that_cannot_be_reached_stops_the_run_before_fold_0_trains(tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE, as in these tests), not logged in or without rights: one error line before any
    work, not a traceback after fold 0 with fold 0 marked done and never pushed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    settings = parse_config(
        [
            str(QUICKSTART),
            "--output_dir",
            str(out),
            "--num_folds",
            "2",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/x",
        ]
    )
    with pytest.raises(PipelineError, match="push_to_hub: cannot reach the hub repo me/x .*hf auth login"):
        run_training(settings)
    assert not (out / "fold_0").exists()
