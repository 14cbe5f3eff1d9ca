#!/usr/bin/env bash
# The GPU check (issues 28 and 34), a few minutes on one CUDA GPU, no hub: the quickstart and the target_pool head with
# bf16, a tiny decoder fully fine-tuned, with LoRA and with 4-bit LoRA (bitsandbytes: pip install .[qlora]); at real
# sizes a KcELECTRA-base-sized encoder against a plain Trainer, a Llama-3.2-1B-sized bf16 decoder with LoRA and QLoRA
# (each best/ reloaded against its fold's test probabilities), and DDP when two GPUs are visible. Prints each case's
# rows/s, peak GPU memory and reload gap as JSON lines. Record them in BENCHMARKS.md.
# `python bench/gpu_check.py --smoke` runs the cases at tiny sizes on a CPU (checks the script, measures nothing).
# Usage: bash bench/gpu_check.sh   (in the environment the README's GPU section installs)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import importlib.util as u; print('bitsandbytes:', 'installed' if u.find_spec('bitsandbytes') else 'missing (the 4-bit case will say so)')"
python bench/gpu_check.py 2>&1 | grep -a '^{"'
