"""Export a checkpoint to ONNX (optionally int8) for fast CPU inference with onnxruntime.

A thin wrapper kept for the commands users script against: the command is `nikl_emotion.commands.export`, also run
as `nikl-emotion export` or `python -m nikl_emotion export`."""

from nikl_emotion.commands.cli import entry_point
from nikl_emotion.commands.export import main

if __name__ == "__main__":
    entry_point(main)()
