"""The backends layer: what a fold model is. Each backend (`fold_backend.FoldBackend`, listed in
`registry.py`) prepares a run's rows, trains a fold and saves its checkpoint folder; `classifier.py` loads any
checkpoint for prediction. The encoder (Trainer, losses, techniques, weight averaging) and the n-gram member."""
