"""Finished recipes side by side (issue 50's 30/60/90-minute table): each folder's recipe.json and its runs' records
as one markdown row (its budget, the share spent, what post-training and the folds got, every member's OOF, the
stack's nested OOF and rule, the predicted file's micro-F1), then the mean over the seeds of each budget.

Usage: python bench/recipe_table.py OUT [OUT ...]   (folders of `recipe.py`, e.g. outputs/recipe-60m-s42)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the package, run from anywhere

from nikl_emotion.folders.run_folder import PostTrainFolder, RecipeFolder, RunFolder, read_mapping

MEMBERS = tuple(os.path.basename(run) for run in RecipeFolder("").stacked)  # the fine-tuned run first
HEADER = (
    "| recipe | seed | spent | post-training steps (epochs) | fold epochs | "
    + " | ".join(f"{member} OOF at 0.5" for member in MEMBERS)
    + " | stack nested OOF (rule) | predicted file |"
)


def recipe_row(out: str) -> dict:
    """One finished recipe's figures: recipe.json's, post_train.json's and each stacked run's summary.json."""
    folder = RecipeFolder(out)
    record = read_mapping(folder.record)
    if "scores" not in record:
        raise SystemExit(f"{out}: not a finished recipe (no recipe.json with scores)")
    scores, post = record["scores"], read_mapping(PostTrainFolder(folder.post_train).summary)
    summaries = {os.path.basename(run): read_mapping(RunFolder(run).summary) for run in folder.stacked}
    return {
        "out": out,
        "minutes": record["request"]["minutes"],
        "seed": record["request"]["seed"],
        "share": record["share_of_budget"],
        "post_train": f"{post['steps']:,} ({post['time_budget']['carried_out']['epochs']:.1f})",
        "fold_epochs": "-".join(f"{fold['epochs_run']:.1f}" for fold in summaries[MEMBERS[0]]["folds"]),
        "oof": {member: summaries[member]["oof"]["micro_f1"] for member in MEMBERS},
        "stack": scores["stack_nested_oof"],
        "rule": scores["stack_rule"],
        "predicted": scores.get("predicted_file_micro_f1"),
    }


def number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(rows: list[dict]) -> str:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for row in rows:
        members = " | ".join(number(row["oof"][member]) for member in MEMBERS)
        lines.append(
            f"| {row['out']} | {row['seed']} | {row['share']:.3f} | {row['post_train']} | {row['fold_epochs']} | "
            f"{members} | {number(row['stack'])} ({row['rule']}) | {number(row['predicted'])} |"
        )
    by_minutes = defaultdict(list)
    for row in rows:
        by_minutes[row["minutes"]].append(row)
    means = "| minutes | recipes | mean spent | mean fine-tune OOF | mean stack nested OOF | mean predicted file |"
    lines += ["", means]
    lines.append("|---|---|---|---|---|---|")
    for minutes, group in sorted(by_minutes.items()):
        mean = {key: statistics.fmean(row[key] for row in group) for key in ("share", "stack")}
        neural = statistics.fmean(row["oof"][MEMBERS[0]] for row in group)
        predicted = [row["predicted"] for row in group if row["predicted"] is not None]
        shown = number(statistics.fmean(predicted)) if predicted else "-"
        lines.append(
            f"| {minutes:g} | {len(group)} | {mean['share']:.3f} | {neural:.4f} | {mean['stack']:.4f} | {shown} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", help="recipe output folders")
    args = parser.parse_args()
    print(markdown([recipe_row(out) for out in args.outs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
