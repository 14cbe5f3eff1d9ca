"""Distil a finished K-fold run into one model: `python distill.py CONFIG --teacher_run OUT --output_dir DIR`.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.distill`, also run
as `nikl-emotion distill` or `python -m nikl_emotion distill`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.distill import main

if __name__ == "__main__":
    entry_point(main)()
