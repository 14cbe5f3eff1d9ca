"""`python -m nikl_emotion COMMAND [...]`: one entry point that lists and runs the pipeline's commands.

Each command is the top-level script of the same name (`train` runs `train.py`), so both spellings behave alike.
"""

from __future__ import annotations

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS: dict[str, str] = {
    "train": "K-fold fine-tuning (or --hp-search N): train.py CONFIG.yaml [--key value ...]",
    "post_train": "masked-LM post-training on task text: post_train.py CONFIG.yaml [--key value ...]",
    "inference": "predict a jsonl with one or more checkpoints: inference.py --checkpoint DIR.. --input --output",
    "ensemble": "vote probability or submission files: ensemble.py --inputs FILE.. --output FILE",
    "score": "the official micro-F1 of a prediction file: score.py GOLD PRED [--per-label]",
    "report": "rebuild a finished run's summary, thresholds, submission and report: report.py OUT",
    "export": "export a checkpoint to ONNX (optionally int8): export.py --checkpoint DIR --output DIR [--int8]",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m nikl_emotion COMMAND [arguments]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[0].replace("-", "_")
    if command not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    script = os.path.join(ROOT, f"{command}.py")
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, ROOT)
    runpy.run_path(script, run_name="__main__")  # the script exits with its own status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
