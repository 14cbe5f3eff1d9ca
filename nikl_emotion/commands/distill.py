"""One student model from a finished K-fold run: `python distill.py CONFIG --teacher_run OUT --output_dir DIR
[--unlabelled_files FILE ...]` (see nikl_emotion/training/distillation.py); serve it with
`inference.py --checkpoint DIR/best`."""

import os

from nikl_emotion.commands.cli import configure_logging, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.distillation import parse_distill_config, run_distillation

    settings = parse_distill_config(argv)
    configure_logging(settings.run.training)
    summary = run_distillation(settings)
    if summary is not None:  # the main process
        student = summary["validation_micro_f1"]["student"]
        best = os.path.join(settings.run.training.output_dir, "best")
        print(f"student validation micro-F1 {student:.4f} on {summary['validated_on']}; checkpoint {best}")
        print(f"note: {summary['validation_note']}")
    return 0
