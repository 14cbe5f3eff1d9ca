"""Figures the recipe benchmarks print for a finished run: dev micro-F1 through score.py (the official scorer's
counting) and the run's OOF scores from its summary.json. Imported by the bench scripts' inline Python."""

from __future__ import annotations

import json
import subprocess
import sys


def dev_f1(dev_file: str, predictions: str) -> float:
    """Micro-F1 of a submission file against the labelled dev file, as score.py reports it."""
    out = subprocess.run(
        [sys.executable, "score.py", dev_file, predictions, "--json"], capture_output=True, text=True, check=True
    )
    return round(json.loads(out.stdout.strip().splitlines()[-1])["micro_f1"], 4)


def run_figures(run: str, dev_file: str) -> dict:
    """OOF micro-F1 at 0.5, the rule the run chose and its nested OOF score, each fold's score, epochs and (with a
    time budget) what ended it, and dev."""
    with open(f"{run}/summary.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    decision = summary["decision"]
    nested = {c["name"]: c["micro_f1"] for c in decision.get("candidates", [])}.get(decision["chosen"])
    return {
        "oof_at_0.5": round(summary["oof"]["micro_f1"], 4),
        "rule": decision["chosen"],
        "nested_oof": None if nested is None else round(nested, 4),
        "folds": [round(f["micro_f1"], 4) for f in summary["folds"]],
        "epochs_run": [round(f.get("epochs_run") or 0.0, 2) for f in summary["folds"]],
        # time_budget_minutes: what ended each fold (time_budget, epochs, early_stopping); absent without a budget
        "ended_by": [(f.get("time_budget") or {}).get("ended_by") for f in summary["folds"]],
        "dev": dev_f1(dev_file, f"{run}/submission.jsonl"),
    }
