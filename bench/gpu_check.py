"""The GPU check (issues 28 and 34): each case trains fold 0 of 2 on CUDA and prints its rows per second, peak GPU
memory and, where it applies, how far the saved best/ served with `dtype="auto"` is from the fold's own test
probabilities. No hub is needed: every model is built here with random weights. Run through bench/gpu_check.sh;
record the figures in BENCHMARKS.md.

Cases (issue 28): the quickstart with bf16; the target_pool head with bf16; a tiny Llama-style decoder fully
fine-tuned, with LoRA (bf16) and with 4-bit LoRA (QLoRA, needs bitsandbytes: pip install .[qlora]).
At real sizes (issue 34): a KcELECTRA-base-sized encoder (its dimensions and 54,343-token vocabulary, the reference
recipe's batch 128 and length 200, bf16) through the pipeline and through a plain Trainer of the same model (rows/s
ratio, peak memory); a ~1.2B-parameter Llama-3.2-1B-sized decoder saved in bf16, with bf16 LoRA and with 4-bit
QLoRA; with two GPUs visible, the encoder case under `accelerate launch` (DDP).

`python bench/gpu_check.py --smoke` runs every case at tiny sizes on the CPU (no 4-bit, no DDP): a check that the
script itself works, not a measurement. `python bench/gpu_check.py --sizes` prints the real-size models'
parameters and shapes, built on the meta device (tests/test_engines.py checks them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from decoder_families import build_llama  # noqa: E402
from hub_families import build_kcelectra  # noqa: E402

from nikl_emotion import EmotionClassifier  # noqa: E402
from nikl_emotion.base.fileio import read_probs  # noqa: E402
from nikl_emotion.training.config_checks import parse_config  # noqa: E402
from nikl_emotion.training.kfold import run_training  # noqa: E402

SAMPLE_TEST = ROOT / "data" / "sample_test.jsonl"
KCELECTRA_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "embedding_size": 768,
    "vocab_size": 54343,
}
LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,  # 2048 / 32: the imitation's config names its own head_dim, which would otherwise stay
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "embedding_size": 32,
    "vocab_size": 54343,
}
TINY_DECODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}


def sized_config(folder: Path, dims: dict):
    """The imitation's config at `folder` with `dims` applied."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    for key, value in dims.items():
        setattr(config, key, value)
    return config


def model_sizes(work: Path) -> list[dict]:
    """The real-size models as this check builds them, on the meta device (no memory, no weights): parameters and
    the shapes that say whether they are what they claim (an attention projection, the embeddings)."""
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining

    cases = [
        ("KcELECTRA-base size", build_kcelectra(work / "sizes-kcelectra"), AutoModelForPreTraining, KCELECTRA_BASE),
        ("Llama-3.2-1B size", build_llama(work / "sizes-llama"), AutoModelForCausalLM, LLAMA_1B),
    ]
    sizes = []
    for name, folder, auto_class, dims in cases:
        with torch.device("meta"):
            model = auto_class.from_config(sized_config(folder, dims))
        shapes = {}
        for key, parameter in model.named_parameters():
            short = key.split(".layers.0.")[-1].split(".layer.0.")[-1]
            if (".0." in key and short.endswith("weight")) or "embeddings" in key or "embed_tokens" in key:
                shapes.setdefault(short, list(parameter.shape))
        sizes.append({"model": name, "parameters": sum(p.numel() for p in model.parameters()), "shapes": shapes})
    return sizes


def device_args(smoke: bool) -> list[str]:
    return ["--use_cpu", "true", "--bf16", "false"] if smoke else ["--use_cpu", "false", "--bf16", "true"]


def quick(smoke: bool, epochs: int = 3) -> list[str]:
    return [
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        str(epochs),
        "--early_stopping_patience",
        "0",
        "--disable_tqdm",
        "true",
        "--save_total_limit",
        "1",
        *device_args(smoke),
    ]


def resized(folder: Path, auto_class, dims: dict, dtype: torch.dtype) -> Path:
    """The imitation at `folder` rebuilt with `dims` (its tokenizer kept; a larger vocabulary leaves ids unused),
    random weights, saved in `dtype`."""
    config = sized_config(folder, dims)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in the shipped dtype, on the GPU: a 1B model in seconds
    try:
        with torch.device(device):
            model = auto_class.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    return folder


def repeated_rows(path: Path, copies: int, folder: Path) -> Path:
    """The sample training file repeated with new ids: enough rows for a throughput figure."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = folder / f"train_x{copies}.jsonl"
    with open(out, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for line in lines:
                row = json.loads(line)
                row["id"] = f"{row['id']}-{copy}"
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def reload_gap(out: Path, fold: int = 0, device: str | None = None) -> float:
    """Max |served best/ - the fold's own test probabilities|, best/ loaded as its run trained (dtype auto)."""
    classifier = EmotionClassifier.from_pretrained(out / f"fold_{fold}" / "best", device=device)
    return float(
        np.abs(classifier.predict_proba(SAMPLE_TEST) - read_probs(out / f"fold_{fold}" / "test_probs.jsonl")[1]).max()
    )


def pipeline_case(name: str, arguments: list[str], work: Path, check_reload: bool = False) -> dict:
    out = work / name.split(" (")[0].replace(" ", "_").replace(",", "")
    reset_memory()
    start = time.perf_counter()
    try:
        run_training(parse_config([str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out), *arguments]))
        seconds = time.perf_counter() - start
        metrics = json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
        result = {
            "case": name,
            "rows_per_s_incl_eval": round(metrics["train_rows"] * metrics["epochs_run"] / seconds, 1),
            "seconds": round(seconds, 1),
            "peak_gpu_mib": peak_mib(),
            "micro_f1": round(metrics["micro_f1"], 4),
        }
        if check_reload:
            result["reload_max_abs_gap"] = reload_gap(out)
        return result
    except Exception as exc:  # one failing case (e.g. no bitsandbytes) must not hide the others' figures
        return {"case": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def plain_trainer_case(model_folder: Path, train_file: Path, smoke: bool, work: Path) -> dict:
    """The same encoder through a plain transformers Trainer (pair input, dynamic padding, one epoch, the pipeline's
    batch and length, evaluation once at the end): the reference point for the pipeline's rows/s and memory."""
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from nikl_emotion.base.labels import LABELS

    rows = load_dataset("json", data_files=str(train_file), split="train")

    def encode(batch):
        targets = [target["form"] or "" for target in (row["target"] for row in batch["input"])]
        encoded = tokenizer([row["form"] for row in batch["input"]], targets, truncation=True, max_length=200)
        encoded["labels"] = [[float(output[label] == "True") for label in LABELS] for output in batch["output"]]
        return encoded

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    data = rows.map(encode, batched=True, remove_columns=rows.column_names).train_test_split(test_size=0.5, seed=42)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_folder, num_labels=len(LABELS), dtype=torch.float32, problem_type="multi_label_classification"
    )
    args = TrainingArguments(
        output_dir=str(work / "plain"),
        per_device_train_batch_size=128,
        num_train_epochs=1,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        bf16=not smoke,
        use_cpu=smoke,
        disable_tqdm=True,
        learning_rate=4e-5,
    )
    reset_memory()
    start = time.perf_counter()
    trainer = Trainer(
        model=model, args=args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer)
    )
    trainer.train()
    trainer.predict(data["test"])
    seconds = time.perf_counter() - start
    return {
        "case": "KcELECTRA-base size, plain Trainer (1 epoch + predict)",
        "rows_per_s_incl_eval": round(len(data["train"]) / seconds, 1),
        "seconds": round(seconds, 1),
        "peak_gpu_mib": peak_mib(),
    }


def small_cases(smoke: bool, work: Path) -> list[dict]:
    decoder = str(build_llama(work / "llama-tiny"))
    llm = ["--model_name_or_path", decoder, "--input_format", "instruction", "--learning_rate", "2e-4"]
    cases = {
        "quickstart (offline electra-tiny, bf16)": [],
        "target_pool head (offline electra-tiny, bf16)": ["--classifier_head", "target_pool"],
        "decoder, full fine-tuning (bf16 autocast)": llm,
        "decoder, LoRA r=8 (bf16 base)": [*llm, "--lora_r", "8", "--gradient_checkpointing", "true"],
    }
    if not smoke:
        cases["decoder, 4-bit LoRA r=8 (QLoRA)"] = [
            *llm,
            "--lora_r",
            "8",
            "--load_in_4bit",
            "true",
            "--gradient_checkpointing",
            "true",
        ]
    return [pipeline_case(name, [*quick(smoke), *extra], work, check_reload=True) for name, extra in cases.items()]


def real_size_cases(smoke: bool, work: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoModelForPreTraining

    encoder = resized(
        build_kcelectra(work / "kcelectra-base"),
        AutoModelForPreTraining,
        TINY_ENCODER if smoke else KCELECTRA_BASE,
        torch.float32,
    )
    train_file = repeated_rows(ROOT / "data" / "sample_train.jsonl", 2 if smoke else 20, work)
    recipe = [
        "--model_name_or_path",
        str(encoder),
        "--train_files",
        str(train_file),
        "--max_seq_length",
        "200",
        "--per_device_train_batch_size",
        "128",
        "--learning_rate",
        "4e-5",
        "--weight_decay",
        "0.1",
        *quick(smoke, epochs=1),
    ]
    results = [
        pipeline_case("KcELECTRA-base size, pipeline (1 epoch + eval + predict)", recipe, work, check_reload=True),
        plain_trainer_case(encoder, train_file, smoke, work),
    ]
    build_llama(work / "llama-1b")
    decoder = resized(work / "llama-1b", AutoModelForCausalLM, TINY_DECODER if smoke else LLAMA_1B, torch.bfloat16)
    llm = [
        "--model_name_or_path",
        str(decoder),
        "--input_format",
        "instruction",
        "--learning_rate",
        "2e-4",
        "--per_device_train_batch_size",
        "16",
        "--lora_r",
        "16",
        "--gradient_checkpointing",
        "true",
        *quick(smoke, 1),
    ]
    results.append(pipeline_case("Llama-3.2-1B size saved bf16, LoRA r=16 (bf16 base)", llm, work, check_reload=True))
    if not smoke:
        results.append(
            pipeline_case(
                "Llama-3.2-1B size saved bf16, 4-bit QLoRA r=16",
                [*llm, "--load_in_4bit", "true"],
                work,
                check_reload=True,
            )
        )
    if not smoke and torch.cuda.device_count() >= 2:
        results.append(ddp_case(recipe, work))
    return results


def ddp_case(recipe: list[str], work: Path) -> dict:
    """The KcELECTRA-base-sized case on two GPUs (accelerate launch, DDP)."""
    out = work / "ddp"
    start = time.perf_counter()
    result = subprocess.run(
        [
            "accelerate",
            "launch",
            "--num_processes",
            "2",
            "--mixed_precision",
            "bf16",
            str(ROOT / "train.py"),
            str(ROOT / "configs" / "quickstart.yaml"),
            "--output_dir",
            str(out),
            *recipe,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"case": "KcELECTRA-base size, 2 GPUs (DDP)", "error": launch_failure(result)}
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    return {
        "case": "KcELECTRA-base size, 2 GPUs (DDP)",
        "seconds_incl_startup": round(seconds, 1),
        "rows_per_s_incl_eval_and_startup": round(metrics["train_rows"] * metrics["epochs_run"] / seconds, 1),
        "reload_max_abs_gap": reload_gap(out),
    }


def launch_failure(result: subprocess.CompletedProcess) -> str:
    """The cause of a failed launch: the workers' own `error:` line or the last line of their traceback, not the
    launcher's closing line (its ChildFailedError banner); the exit code where nothing was printed."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[0][:300]
    worker = [line for line in lines if line.startswith("[rank") and ("Error" in line or "error" in line)]
    if worker:
        return worker[-1][:300]
    exceptions = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    return (exceptions[0] if exceptions else f"exit code {result.returncode}, nothing printed")[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every case at tiny sizes on the CPU (script check)")
    parser.add_argument("--only", choices=("small", "real"), help="run one group of cases")
    parser.add_argument(
        "--sizes", action="store_true", help="print the real-size models' parameters and shapes (meta device) and exit"
    )
    args = parser.parse_args()
    if args.sizes:
        with tempfile.TemporaryDirectory(prefix="gpu_check_sizes_") as work:
            for size in model_sizes(Path(work)):
                print(json.dumps(size))
        return
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine (--smoke runs it at tiny sizes on the CPU)")
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)",
                "gpus": torch.cuda.device_count(),
                "torch": torch.__version__,
            }
        )
    )
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        groups = {"small": small_cases, "real": real_size_cases}
        for name, cases in groups.items():
            if args.only in (None, name):
                for result in cases(args.smoke, work):
                    print(json.dumps(result, ensure_ascii=False), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
