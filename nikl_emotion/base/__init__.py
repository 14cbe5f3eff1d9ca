"""The base layer: errors, the label order, atomic file IO, locks, the names settings take, the checkpoint
folder's file names, and the settings dataclasses (config.py, a leaf every layer may read)."""
