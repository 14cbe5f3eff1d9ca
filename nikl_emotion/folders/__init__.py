"""Folder layouts and kinds: which command made a folder, and every path of a run, fold, post-training or stack
folder (the names --overwrite deletes and no other command may replace)."""
