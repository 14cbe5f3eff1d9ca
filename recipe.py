"""The offline recipe as one command: `python recipe.py DATA_DIR --minutes 60 --output_dir OUT`.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.recipe`, also run
as `nikl-emotion recipe` or `python -m nikl_emotion recipe`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.recipe import main

if __name__ == "__main__":
    entry_point(main)()
