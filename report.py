"""Rebuild the end of a finished training run from its fold files: OOF probabilities, thresholds.json,.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.report`, also run
as `nikl-emotion report` or `python -m nikl_emotion report`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.report import main

if __name__ == "__main__":
    entry_point(main)()
