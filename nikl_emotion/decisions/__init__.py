"""The decisions layer: the official metric, OOF thresholds, `DecisionRule` and votes, `decision: auto`, and
the stacker, all on probabilities (no model, no run folder)."""
