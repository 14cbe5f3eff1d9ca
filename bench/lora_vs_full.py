"""LoRA against full fine-tuning of the same small Llama-style decoder on CPU (issue 28): trainable parameters,
peak RSS of the training process and seconds per optimizer step, each mode in its own train.py process (fold 0 of
2 on the sample data, instruction format, a fixed number of steps, no evaluation until the end).

    python bench/lora_vs_full.py [--steps 30] [--hidden 512] [--layers 8]

Run it alone on the machine (another CPU-heavy process makes the timings worthless)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from decoder_families import build_llama  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from nikl_emotion.backends.backbone import load_tokenizer  # noqa: E402
from nikl_emotion.backends.decoder_backend import new_decoder_model  # noqa: E402
from nikl_emotion.base.config import ModelArguments  # noqa: E402

MODES = {
    "full fine-tuning": [],
    "LoRA r=8 (all projections)": ["--lora_r", "8", "--lora_alpha", "16"],
    "LoRA r=8 + gradient checkpointing": ["--lora_r", "8", "--lora_alpha", "16", "--gradient_checkpointing", "true"],
}


def parameters(decoder: str, extra: list[str]) -> tuple[int, int]:
    lora_r = int(extra[extra.index("--lora_r") + 1]) if "--lora_r" in extra else 0
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    model = new_decoder_model(
        decoder, load_tokenizer(decoder), ModelArguments(model_name_or_path=decoder, lora_r=lora_r), args
    )
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


# runs train.py in this process and reports the process's own peak RSS at exit (RUSAGE_CHILDREN would keep the
# largest of all children so far)
WRAPPER = (
    "import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n    print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)"
)


def measure(decoder: str, extra: list[str], steps: int, out: Path) -> dict:
    """One train.py process: seconds per step from the Trainer's train_runtime, the process's peak RSS."""
    command = [
        sys.executable,
        "-c",
        WRAPPER,
        str(ROOT / "train.py"),
        str(ROOT / "configs" / "quickstart.yaml"),
        "--model_name_or_path",
        decoder,
        "--output_dir",
        str(out),
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--input_format",
        "instruction",
        "--max_steps",
        str(steps),
        "--eval_strategy",
        "steps",
        "--save_strategy",
        "steps",
        "--eval_steps",
        str(steps),
        "--save_steps",
        str(steps),
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "2e-4",
        "--early_stopping_patience",
        "0",
        "--disable_tqdm",
        "true",
        *extra,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    peak_kib = int(re.search(r"PEAK_RSS_KIB (\d+)", result.stderr).group(1))
    runtime = float(re.search(r"'train_runtime': '([\d.]+)'", result.stdout + result.stderr).group(1))
    return {"s_per_step": round(runtime / steps, 3), "peak_rss_mib": round(peak_kib / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lora_vs_full_"))
    dims = {
        "hidden_size": options.hidden,
        "num_hidden_layers": options.layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 4 * options.hidden,
    }
    decoder = str(build_llama(work / "llama", dims))
    for index, (name, extra) in enumerate(MODES.items()):
        trainable, total = parameters(decoder, extra)
        figures = measure(decoder, extra, options.steps, work / f"run{index}")
        print(json.dumps({"mode": name, "trainable_params": trainable, "total_params": total, **figures}), flush=True)


if __name__ == "__main__":
    main()
