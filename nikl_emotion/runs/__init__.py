"""The runs layer: a finished run (`FinishedRun`), a stack of runs as a folder, the end of a run (summary,
report), and predicting files with a checkpoint, run or stack (`EmotionClassifier`, `RunClassifier`)."""
