"""One student model from a finished K-fold run: `python distill.py CONFIG --teacher_run OUT --output_dir DIR
[--unlabelled_files FILE ...]` (see nikl_emotion/training/distillation.py); serve it with
`inference.py --checkpoint DIR/best`."""

from nikl_emotion.commands.cli import quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.distillation import parse_distill_config, run_distillation

    run_distillation(parse_distill_config(argv))
    return 0
