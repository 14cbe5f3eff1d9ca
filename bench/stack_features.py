"""What the stacker reads, measured on finished recipes (issue 50's goal: a better stack within the same hour).

Today's stacker fits, per label, a logistic regression on each member's logit for that label only. Emotions
co-occur and exclude each other (joy and sadness, anger and disgust), so a label's regression may gain from every
label's logits of every member: 16 inputs instead of 2 for two members (24 instead of 3 for three). Both variants
run through the recipe's own stack stage (`stack_files`, rule chosen on the stack's nested OOF), on the same
members, so nested OOF and the predicted file's micro-F1 compare side by side. Nothing is written
into the recipes' folders.

Usage: python bench/stack_features.py RECIPE [RECIPE ...] [--dev outputs/nikl-dev-predicted/dev.jsonl]
  each RECIPE a finished `recipe.py` output folder (its fine-tune/, ngram/ and ngram-context/ runs)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run_figures import dev_f1  # noqa: E402
from nikl_emotion.decisions import stacking  # noqa: E402
from nikl_emotion.decisions.voting import DecisionRule  # noqa: E402
from nikl_emotion.runs.stack_run import stack_files  # noqa: E402

PER_LABEL = stacking._label_logits


def every_label_logits(features: list[np.ndarray], label: int) -> np.ndarray:
    """(rows, members x labels): every member's logit for every label, whichever label is fitted."""
    return np.concatenate([stacking.logits(member) for member in features], axis=1)


VARIANTS = {"per_label": PER_LABEL, "every_label": every_label_logits}


@contextlib.contextmanager
def stacker_inputs(variant: str):
    stacking._label_logits = VARIANTS[variant]
    try:
        yield
    finally:
        stacking._label_logits = PER_LABEL


def measure(recipe: str, variant: str, dev: str | None) -> dict:
    names = ("fine-tune", "ngram", "ngram-context")  # a recipe before the second n-gram view has the first two
    runs = [os.path.join(recipe, name) for name in names if os.path.isdir(os.path.join(recipe, name))]
    with tempfile.TemporaryDirectory() as scratch, stacker_inputs(variant):
        submission = os.path.join(scratch, "submission.jsonl")
        result = stack_files(runs, submission, DecisionRule(), choose=True)
        choice = result["decision"]
        nested = {c["name"]: c["micro_f1"] for c in choice["candidates"]}
        figures = {
            "recipe": recipe,
            "stacker": variant,
            "nested_oof_at_0.5": round(result["scores"]["stack (nested)"]["micro_f1"], 4),
            "rule": choice["chosen"],
            "nested_oof": round(nested[choice["chosen"]], 4),
        }
        if dev:
            figures["dev"] = dev_f1(dev, submission)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--dev", help="the labelled predicted file, scored once per recipe and stacker")
    args = parser.parse_args()
    for recipe in args.recipes:
        for variant in VARIANTS:
            print(json.dumps(measure(recipe, variant, args.dev)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
