"""The K-fold loop under the engines users scale with, run for real on CPU processes (gloo): DeepSpeed ZeRO-2
and ZeRO-3 through `accelerate launch` on 2 processes, ZeRO-2 through `python train.py --deepspeed` on one; a
fold's `best/` reproduces its probabilities, `loading.json` says what ran, nothing of a fold's engine outlives it.
Every launch has a timeout, so a hang fails instead of blocking the suite."""

import importlib.util
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from accelerate.state import PartialState
from conftest import ROOT, SAMPLE_TEST, run_cli
from safetensors import safe_open

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.engines import (
    Engine,
    check_engine,
    check_post_training_engine,
    engine_of,
)
from nikl_emotion.base.config import TechniqueArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ZERO2 = ROOT / "configs" / "deepspeed-zero2.json"
TWO_FOLDS_ONE_EPOCH = ("--num_folds", "2", "--num_train_epochs", "1")
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or shutil.which("accelerate") is None,
    reason="deepspeed not installed (pip install .[deepspeed])",
)


def launch(command: list, out, **env) -> subprocess.CompletedProcess:
    """A training command in processes of its own, one thread each (two torch processes on two cores), with a
    timeout: a hang is a failure."""
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("ACCEL")}
    environment.update(OMP_NUM_THREADS="1", **env)
    result = subprocess.run(
        [*command, "--output_dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fold_reload_gap(out, fold: int) -> float:
    """Largest difference between fold K's test probabilities as the run wrote them and as its saved best/ gives
    them, loaded the way inference.py loads it (dtype auto: as loading.json says the fold ran)."""
    _, written = read_probs(out / f"fold_{fold}" / "test_probs.jsonl")
    classifier = EmotionClassifier.from_pretrained(out / f"fold_{fold}" / "best", device="cpu")
    return float(np.abs(classifier.predict_proba(str(SAMPLE_TEST)) - written).max())


def loading_record(out, fold: int = 0) -> dict:
    return json.loads((out / f"fold_{fold}" / "best" / "loading.json").read_text(encoding="utf-8"))


def saved_dtypes(out, fold: int = 0) -> set:
    with safe_open(str(out / f"fold_{fold}" / "best" / "model.safetensors"), "pt") as weights:
        return {weights.get_tensor(key).dtype for key in weights.keys()}


def test_the_resolved_config_leaves_the_process_state_as_it_was(tmp_path):
    """Writing config.yaml (main process only) built a TrainingArguments, which resets accelerate's process-wide
    state; under DeepSpeed the main process then believed it was alone and skipped its replicas' barriers."""
    settings = parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "out")])
    PartialState._shared_state["marker"] = "left alone"
    try:
        settings.resolved()
        assert PartialState._shared_state.get("marker") == "left alone"
    finally:
        PartialState._shared_state.pop("marker", None)


def test_the_launchers_deepspeed_config_names_the_engine(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ZERO2))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert engine_of() == Engine("deepspeed", 2, "bf16")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert engine_of() == Engine()


@pytest.mark.parametrize(
    "engine, techniques, message",
    [
        (Engine("deepspeed", 2), {"adversarial": "fgm"}, "adversarial: fgm perturbs .* DeepSpeed ZeRO-2"),
        (Engine("deepspeed", 2, "bf16"), {"ema_decay": 0.999}, "ema_decay/swa_epochs: .* bf16"),
        (
            Engine("deepspeed", 3),
            {"swa_epochs": 1},
            "ema_decay/swa_epochs: DeepSpeed ZeRO-3 holds the weights in shards",
        ),
        (Engine("fsdp"), {}, "fsdp: accelerate applies FSDP on GPUs only"),
        (Engine("deepspeed", 3), {"lora_r": 4}, "lora_r: under DeepSpeed ZeRO-3 each process holds a shard"),
        (Engine("deepspeed", 2, "bf16"), {"lora_r": 4}, "lora_r: under DeepSpeed with bf16 the engine casts"),
    ],
)
def test_what_an_engine_cannot_run_is_refused_before_any_work(engine, techniques, message):
    lora_r = techniques.pop("lora_r", 0)
    with pytest.raises(PipelineError, match=message):
        check_engine(engine, TechniqueArguments(**techniques), lora_r)


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: check_post_training_engine(Engine("deepspeed", 2)), "post-training under DeepSpeed ZeRO-2 is not"),
        (lambda: check_post_training_engine(Engine("deepspeed", 3)), "post-training under DeepSpeed ZeRO-3 is not"),
    ],
)
def test_what_another_program_has_not_run_under_deepspeed_is_refused(check, message):
    with pytest.raises(PipelineError, match=message):
        check()


def test_what_other_programs_ran_under_an_engine_is_accepted():
    check_post_training_engine(Engine())


def test_ema_is_kept_under_deepspeed_in_float32():
    check_engine(Engine("deepspeed", 2), TechniqueArguments(ema_decay=0.999))


@needs_deepspeed
def test_one_process_zero2_runs_as_documented_and_bf16_is_recorded_as_half_weights(tmp_path):
    """`python train.py CONFIG --deepspeed FILE` with no launcher, 2 folds; DeepSpeed's bf16 casts the weights
    (float32 copies stay in its optimizer), so best/ holds bf16 weights served without autocast, as the fold
    predicted. (ZeRO-2 on 2 processes: bench/engines.py; the 2-process path is ZeRO-3's test below.)"""
    out = tmp_path / "zero2-bf16"
    result = launch(
        ["python", "train.py", str(QUICKSTART), *TWO_FOLDS_ONE_EPOCH, "--deepspeed", str(ZERO2), "--bf16", "true"], out
    )
    # DeepSpeed's shared-memory all-reduce (only its tensor-parallel inference calls it) is not compiled on CPU
    assert "shm_comm" not in result.stdout + result.stderr
    for fold in (0, 1):
        record = loading_record(out, fold)
        assert (record["base_dtype"], record["autocast"]) == ("bfloat16", None)
        assert saved_dtypes(out, fold) == {torch.bfloat16}
        assert fold_reload_gap(out, fold) <= 1e-5
    assert_memory_level(out)
    # inference.py --run serves the folds as the run voted them
    probs = tmp_path / "p.jsonl"
    run_cli("inference.py", "--run", out, "--input", SAMPLE_TEST, "--output", tmp_path / "s.jsonl", "--probs", probs)
    mean = np.mean([read_probs(out / f"fold_{k}" / "test_probs.jsonl")[1] for k in (0, 1)], axis=0)
    np.testing.assert_allclose(read_probs(probs)[1], mean, atol=1e-5)


def assert_memory_level(out) -> None:
    """The main process's RSS after fold 1 within 10% of after fold 0: nothing of fold 0's engine was kept."""
    rss = [json.loads((out / f"fold_{k}" / "metrics.json").read_text())["process_rss_mb"] for k in (0, 1)]
    assert rss[1] <= rss[0] * 1.1, rss


def test_the_launchers_mixed_precision_and_the_kernel_that_ran_are_recorded(tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` with bf16 unset in the config trains and predicts under bf16
    autocast: best/ is served so. An offline backbone is built here and takes no attention kernel asked for:
    loading.json names the one that ran (sdpa), so serving does not ask for a kernel it never used."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = tmp_path / "launcher-bf16"
    flash = ("--attn_implementation", "flash_attention_2")  # accepted: the launcher's bf16 autocast feeds it
    run_training(parse_config([str(QUICKSTART), *TWO_FOLDS_ONE_EPOCH, "--fold", "0", *flash, "--output_dir", str(out)]))
    record = loading_record(out)
    assert (record["base_dtype"], record["autocast"], record["attn_implementation"]) == ("float32", "bf16", "sdpa")
    assert fold_reload_gap(out, 0) <= 1e-5


@needs_deepspeed
def test_zero3_shards_the_weights_and_saves_them_gathered_with_the_techniques_it_keeps(tmp_path):
    """ZeRO-3 on 2 processes with the target-pooling head, LLRD, R-Drop and multi-sample dropout: models are built
    partitioned (the offline backbone whole, by the main process alone), every prediction step is a collective both
    ranks run, and best/ holds the whole weights both gathered."""
    out = tmp_path / "zero3"
    techniques = ("--classifier_head", "target_pool", "--layerwise_lr_decay", "0.8", "--rdrop_alpha", "1.0")
    result = launch(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(ROOT / "configs" / "accelerate-deepspeed-zero3.yaml"),
            "--num_processes",
            "2",
            "train.py",
            str(QUICKSTART),
            *TWO_FOLDS_ONE_EPOCH,
            *techniques,
            "--multi_sample_dropout",
            "2",
            "--per_device_eval_batch_size",
            "16",  # 100 test rows over 2 ranks: one rank runs an extra, discarded step to keep them in step
        ],
        out,
    )
    for fold in (0, 1):
        # the ranks' probabilities, gathered, equal one process serving the saved best/: the ranks agreed
        assert fold_reload_gap(out, fold) <= 1e-5
    whole = EmotionClassifier.from_pretrained(out / "fold_0" / "best", device="cpu").model
    assert all(parameter.numel() > 0 for parameter in whole.parameters())  # no shard saved as an empty tensor
    assert_memory_level(out)
    assert result.stdout.count("   oof ") == 1  # one process wrote and printed
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("best.partial"))


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_builds_its_real_size_models_at_their_true_sizes(tmp_path):
    """bench/gpu_check.py --sizes, on the meta device: a Llama-3.2-1B's q_proj is 2048x2048 (head_dim 64, not the
    tiny imitation's 16) and its 1.24B parameters; KcELECTRA-base's dimensions and 54,343-token vocabulary."""
    sizes = {size["model"]: size for size in gpu_check().model_sizes(tmp_path)}
    llama, electra = sizes["Llama-3.2-1B size"], sizes["KcELECTRA-base size"]
    assert llama["shapes"]["self_attn.q_proj.weight"] == [2048, 2048]
    assert llama["shapes"]["self_attn.k_proj.weight"] == [512, 2048]
    assert llama["parameters"] == 1_235_814_400  # Llama-3.2-1B's count, tied embeddings
    assert electra["shapes"]["electra.embeddings.word_embeddings.weight"] == [54343, 768]
    assert electra["shapes"]["intermediate.dense.weight"] == [3072, 768]


def test_the_gpu_checks_failed_launch_reports_its_cause():
    failure = gpu_check().launch_failure
    banner = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n=====\ntrain.py FAILED\n"
    stderr = "Traceback (most recent call last):\n  File x\nerror: bf16: needs a GPU\n" + banner
    assert failure(subprocess.CompletedProcess([], 1, "", stderr)) == "error: bf16: needs a GPU"
    worker = "[rank0]: Traceback\n[rank0]: RuntimeError: CUDA out of memory\n" + banner
    assert failure(subprocess.CompletedProcess([], 1, "", worker)) == "[rank0]: RuntimeError: CUDA out of memory"
    assert failure(subprocess.CompletedProcess([], -9, "", "")) == "exit code -9, nothing printed"
