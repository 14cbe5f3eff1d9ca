"""Masked-LM post-training on the task's unlabelled text: `python post_train.py configs/post_train-offline.yaml.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.post_train`, also run
as `nikl-emotion post_train` or `python -m nikl_emotion post_train`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.post_train import main

if __name__ == "__main__":
    entry_point(main)()
