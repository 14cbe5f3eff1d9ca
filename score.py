"""Score a submission against gold labels with the official metric (micro-F1 over the N×8 matrix).

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.score`, also run
as `nikl-emotion score` or `python -m nikl_emotion score`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.score import main

if __name__ == "__main__":
    entry_point(main)()
