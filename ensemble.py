"""Combine fold (or model) predictions into one submission.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.ensemble`, also run
as `nikl-emotion ensemble` or `python -m nikl_emotion ensemble`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.ensemble import main

if __name__ == "__main__":
    entry_point(main)()
