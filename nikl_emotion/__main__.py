"""`nikl-emotion COMMAND [...]` (the console script) or `python -m nikl_emotion COMMAND [...]`: one entry point that
lists and runs the pipeline's commands.

Each command is `nikl_emotion.commands.COMMAND.main`, which the top-level script of the same name (`train.py`) also
runs, so every spelling behaves alike.
"""

from __future__ import annotations

import importlib
import sys

from nikl_emotion.commands.cli import entry_point

__all__ = [
    "COMMANDS",
    "usage",
    "main",
    "run",
]


COMMANDS: dict[str, str] = {
    "train": "K-fold fine-tuning (or --hp-search N): train.py CONFIG.yaml [--key value ...]",
    "distill": "one student from a finished run's soft targets: distill.py CONFIG --teacher_run OUT --output_dir DIR",
    "post_train": "masked-LM post-training on task text: post_train.py CONFIG.yaml [--key value ...]",
    "inference": "predict a jsonl with one or more checkpoints: inference.py --checkpoint DIR.. --input --output",
    "ensemble": "vote probability or submission files: ensemble.py --inputs FILE.. --output FILE",
    "score": "the official micro-F1 of a prediction file: score.py GOLD PRED [--per-label]",
    "report": "rebuild a finished run's summary, thresholds, submission and report: report.py OUT",
    "runs": "finished runs side by side, the settings that differ: runs DIR.. [--gold FILE] [--output TABLE.md]",
    "export": "export a checkpoint to ONNX (optionally int8): export.py --checkpoint DIR --output DIR [--int8]",
    "serve": "an HTTP service and a page for a run, stack, checkpoint or export: serve FOLDER [--port 8000]",
    "recipe": "the offline recipe in one command on its minutes: recipe DATA_DIR [--minutes 60] [--output_dir OUT]",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: nikl-emotion COMMAND [arguments]   (or python -m nikl_emotion; COMMAND --help for its options)",
        "",
        "commands:",
    ]
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
    module = importlib.import_module(f"nikl_emotion.commands.{command}")
    sys.argv = [f"nikl-emotion {command}", *argv[1:]]
    entry_point(module.main)()  # exits with the command's own status
    return 0


def run() -> None:
    """The `nikl-emotion` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
