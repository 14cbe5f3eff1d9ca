"""K-fold training: `python train.py CONFIG.yaml [--key value ...]` (or under `accelerate launch`).

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.train`, also run
as `nikl-emotion train` or `python -m nikl_emotion train`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.train import main

if __name__ == "__main__":
    entry_point(main)()
