"""The GPU check (issue 28): each case trains fold 0 of 2 on the sample data on CUDA and prints its training rows per
second and peak GPU memory. No hub is needed: the decoders are the tiny imitations of tests/decoder_families.py,
the encoder the offline backbone. Run through bench/gpu_check.sh; record the figures in BENCHMARKS.md.

Cases: the quickstart with bf16; the target_pool head with bf16; a tiny Llama-style decoder with LoRA (bf16) and
with 4-bit LoRA (QLoRA, needs bitsandbytes: pip install .[qlora]); the same decoder fully fine-tuned."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from decoder_families import build_decoder  # noqa: E402
from nikl_emotion.training.config_checks import parse_config  # noqa: E402
from nikl_emotion.training.kfold import run_training  # noqa: E402

QUICK = ["--num_folds", "2", "--fold", "0", "--num_train_epochs", "3", "--early_stopping_patience", "0",
         "--use_cpu", "false", "--bf16", "true", "--disable_tqdm", "true", "--save_total_limit", "1"]


def cases(decoder: str) -> dict[str, list[str]]:
    llm = ["--model_name_or_path", decoder, "--input_format", "instruction", "--learning_rate", "2e-4"]
    return {
        "quickstart (offline electra-tiny, bf16)": [],
        "target_pool head (offline electra-tiny, bf16)": ["--classifier_head", "target_pool"],
        "decoder, full fine-tuning (bf16 autocast)": llm,
        "decoder, LoRA r=8 (bf16 base)": [*llm, "--lora_r", "8", "--gradient_checkpointing", "true"],
        "decoder, 4-bit LoRA r=8 (QLoRA)": [*llm, "--lora_r", "8", "--load_in_4bit", "true", "--gradient_checkpointing", "true"],
    }


def run_case(name: str, extra: list[str], work: Path) -> dict:
    out = work / name.split(" (")[0].replace(" ", "_").replace(",", "")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        run_training(*parse_config([str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out), *QUICK, *extra]))
    except Exception as exc:  # one failing case (e.g. no bitsandbytes) must not hide the others' figures
        return {"case": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    rows = metrics["train_rows"] * metrics["epochs_run"]
    return {"case": name, "rows_per_s_incl_eval": round(rows / seconds, 1), "seconds": round(seconds, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1), "micro_f1": round(metrics["micro_f1"], 4)}


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine")
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        decoder = str(build_decoder("llama", work / "llama"))
        for name, extra in cases(decoder).items():
            print(json.dumps(run_case(name, extra, work), ensure_ascii=False), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
