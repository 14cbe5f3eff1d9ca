"""K-fold training: `python train.py CONFIG.yaml [--key value ...]` (or under `accelerate launch`)."""

from nikl_emotion.cli import entry_point, quiet_libraries


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.config import parse_config
    from nikl_emotion.training import run_training

    run_training(*parse_config(argv))
    return 0


if __name__ == "__main__":
    entry_point(main)()
