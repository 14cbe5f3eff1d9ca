"""The engines table (issue 46): each engine (DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP) x each model (the offline
encoder, a bf16-saved Llama-style decoder fully fine-tuned, the same with LoRA) as a 2-fold quickstart run on 2 CPU
processes (gloo, OMP_NUM_THREADS=1 each): runs or refused (the first error line), the largest gap between a fold's
test probabilities and its best/ served as inference.py serves it, the main process's RSS after each fold, and the
seconds per fold (the whole launch over the folds, start-up included). One JSON line per case; the table in
BENCHMARKS.md is made from them.

    python bench/engines.py [--only ENGINE] [--epochs N] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from decoder_families import build_decoder  # noqa: E402
from gpu_check import reload_gap  # noqa: E402  (bench/, this script's folder, is on the path)

LAUNCH = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no"]
ENGINES = {
    "DDP": [*LAUNCH, "--multi_gpu", "--mixed_precision", "no"],
    "ZeRO-2": [*LAUNCH, "--config_file", str(ROOT / "configs" / "accelerate-deepspeed-zero2.yaml")],
    "ZeRO-3": [*LAUNCH, "--config_file", str(ROOT / "configs" / "accelerate-deepspeed-zero3.yaml")],
    "FSDP": [*LAUNCH, "--config_file", str(ROOT / "configs" / "accelerate-fsdp.yaml")],
}
DECODER = ["--input_format", "instruction", "--learning_rate", "2e-3"]


def models(work: Path) -> dict[str, list[str]]:
    llama = str(build_decoder("llama", work / "llama"))  # saved in bf16, as Llama checkpoints ship
    return {
        "encoder (offline electra-tiny)": [],
        "decoder, bf16-saved, full": ["--model_name_or_path", llama, *DECODER],
        "decoder, bf16-saved, LoRA r=4": [
            "--model_name_or_path",
            llama,
            *DECODER,
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
        ],
    }


def case(engine: str, model: str, extra: list[str], work: Path, epochs: int) -> dict:
    out = work / f"{engine}-{len(list(work.iterdir()))}"
    command = [*ENGINES[engine], "train.py", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out)]
    command += ["--num_folds", "2", "--num_train_epochs", str(epochs), *extra]
    start = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    seconds = time.perf_counter() - start
    row = {"engine": engine, "model": model}
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if line.startswith("error:")] or lines[-1:]
        return {**row, "status": "refused" if errors and errors[0].startswith("error:") else "failed", "why": errors[0]}
    metrics = [json.loads((out / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8")) for k in (0, 1)]
    record = json.loads((out / "fold_0" / "best" / "loading.json").read_text(encoding="utf-8"))
    return {
        **row,
        "status": "runs",
        "reload_gap": max(reload_gap(out, fold, "cpu") for fold in (0, 1)),
        "rss_mb_per_fold": [m["process_rss_mb"] for m in metrics],
        "seconds_per_fold": round(seconds / 2, 1),
        "best_dtype": record["base_dtype"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=tuple(ENGINES), help="one engine's row")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="every case with bf16: true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engines_") as folder:
        work = Path(folder)
        (work / "runs").mkdir()
        precision = ["--bf16", "true"] if args.bf16 else []
        for model, extra in models(work).items():
            for engine in ENGINES:
                if args.only in (None, engine):
                    row = case(engine, model, [*extra, *precision], work / "runs", args.epochs)
                    print(json.dumps({**row, "bf16": args.bf16}), flush=True)


if __name__ == "__main__":
    main()
