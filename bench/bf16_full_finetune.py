"""A decoder saved in bf16 (as Llama, Qwen2, Gemma, EXAONE ship), fully fine-tuned with the pipeline: out-of-fold
micro-F1 and the share of its weights the fine-tuning changed, beside a float32 copy holding the same values.

    python bench/bf16_full_finetune.py [--out bench/out/bf16] [--lr 5e-5] [--epochs 5]

Run it from a checkout (the code under test is whichever `nikl_emotion` PYTHONPATH finds first), e.g. for the code
before the precision rule: `git worktree add /tmp/before 2423757 && PYTHONPATH=/tmp/before python
bench/bf16_full_finetune.py --out bench/out/bf16-before`. The sample data and a small random-init Llama-style model:
the figures compare precision handling, not model quality.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the family imitations (tests/decoder_families.py)

from decoder_families import build_llama  # noqa: E402

DIMS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def checkpoint(folder: Path, dtype: torch.dtype, source: Path | None = None) -> Path:
    """The Llama imitation saved in `dtype`; with `source`, a copy of it (same tokenizer files) re-saved."""
    if source is None:
        folder.mkdir(parents=True)
        build_llama(folder, DIMS)
    else:
        shutil.copytree(source, folder)
    AutoModelForCausalLM.from_pretrained(folder).to(dtype).save_pretrained(folder)
    return folder


def changed_share(start: Path, runs: Path) -> float:
    """Share of the base's weight elements (all but the new head) that differ between the checkpoint and best/."""
    initial = {key: value.float() for key, value in load_file(start / "model.safetensors").items()}
    changed = total = 0
    for best in sorted(runs.glob("fold_*/best")):
        trained = load_file(best / "model.safetensors")
        for key, value in initial.items():
            if key in trained:
                changed += int((trained[key].float() != value).sum())
                total += value.numel()
    return changed / total


def train(model: Path, out: Path, lr: float, epochs: int) -> dict:
    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    started = time.time()
    run_training(
        parse_config(
            [
                str(ROOT / "configs" / "quickstart.yaml"),
                "--model_name_or_path",
                str(model),
                "--output_dir",
                str(out),
                "--num_folds",
                "3",
                "--num_train_epochs",
                str(epochs),
                "--early_stopping_patience",
                "0",
                "--input_format",
                "instruction",
                "--learning_rate",
                str(lr),
                "--per_device_train_batch_size",
                "16",
                "--disable_tqdm",
                "true",
                "--overwrite",
                "true",
            ]
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    return {
        "oof_micro_f1": round(summary["oof"]["micro_f1"], 4),
        "weights_changed": round(changed_share(model, out), 4),
        "seconds": round(time.time() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "bf16"))
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    bf16 = checkpoint(out / "llama-bf16", torch.bfloat16)
    fp32 = checkpoint(out / "llama-fp32", torch.float32, source=bf16)
    results = {
        name: train(model, out / f"run-{name}", args.lr, args.epochs)
        for name, model in (("bf16-saved", bf16), ("fp32-copy", fp32))
    }
    from nikl_emotion.base.fileio import read_probs

    a, b = (read_probs(out / f"run-{name}" / "oof.jsonl")[1] for name in ("bf16-saved", "fp32-copy"))
    results["max_oof_probability_difference"] = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    import nikl_emotion

    results["code"] = str(Path(nikl_emotion.__file__).parent.parent)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
