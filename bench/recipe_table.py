"""Finished recipes side by side (issue 50's 30/60/90-minute table): each folder's recipe.json and its runs' records
as one markdown row (its budget, the share spent, what post-training and the folds got, every member's OOF, the
stack's nested OOF and rule, the predicted file's micro-F1), then the mean over the seeds of each budget.

Usage: python bench/recipe_table.py OUT [OUT ...]   (folders of `recipe.py`, e.g. outputs/recipe-60m-s42)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

MEMBERS = ("fine-tune", "ngram", "ngram-context")
HEADER = (
    "| recipe | seed | spent | post-training steps (epochs) | fold epochs | "
    + " | ".join(f"{member} OOF at 0.5" for member in MEMBERS)
    + " | stack nested OOF (rule) | predicted file |"
)


def read(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def fold_epochs(run: str) -> str:
    epochs = []
    for name in sorted(os.listdir(run)):
        metrics = os.path.join(run, name, "metrics.json")
        if name.startswith("fold_") and os.path.isfile(metrics):
            epochs.append(read(metrics)["epochs_run"])
    return "-".join(f"{value:.1f}" for value in epochs) if epochs else "-"


def recipe_row(out: str) -> dict:
    record = read(os.path.join(out, "recipe.json"))
    if "scores" not in record:
        raise SystemExit(f"{out}: the recipe has not finished (recipe.json has no scores)")
    scores, minutes = record["scores"], record["request"]["minutes"]
    post = read(os.path.join(out, "post-train", "post_train.json"))
    oof = {member: scores["oof_at_0.5"].get(os.path.join(out, member)) for member in MEMBERS}
    if any(value is None for value in oof.values()):  # recorded under the path the recipe was given
        by_tail = {path.rstrip("/").rsplit("/", 1)[-1]: value for path, value in scores["oof_at_0.5"].items()}
        oof = {member: by_tail.get(member) for member in MEMBERS}
    return {
        "out": out,
        "minutes": minutes,
        "seed": record["request"]["seed"],
        "share": record["share_of_budget"],
        "post_train": f"{post['steps']:,} ({post['time_budget']['carried_out']['epochs']:.1f})",
        "fold_epochs": fold_epochs(os.path.join(out, "fine-tune")),
        "oof": oof,
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
        neural = statistics.fmean(row["oof"]["fine-tune"] for row in group)
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
