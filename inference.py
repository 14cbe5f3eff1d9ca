"""Predict a jsonl file with one or more checkpoints and write an official-format submission.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.inference`, also run
as `nikl-emotion inference` or `python -m nikl_emotion inference`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.inference import main

if __name__ == "__main__":
    entry_point(main)()
