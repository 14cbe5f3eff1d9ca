"""Masked-LM post-training on the task's unlabelled text: `python post_train.py configs/post_train-offline.yaml
[--output_dir DIR] [--max_steps N] [--key value ...]` (or under `accelerate launch`). DIR is then a model path for
train.py."""

from nikl_emotion.commands.cli import configure_logging, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.post_training import describe_post_training, parse_post_train_config, run_post_training

    settings = parse_post_train_config(argv)
    configure_logging(settings.training)
    summary = run_post_training(settings)
    if summary is not None:  # the main process
        print(describe_post_training(summary, settings.training.output_dir))
    return 0
