"""The table of runs (`nikl-emotion runs DIR ...`, `report.py --compare DIR ...`): one row per finished run, stack
or hyper-parameter search folder — backbone, head, input format, loss, the settings that differ between the listed
runs (only those), folds, out-of-fold micro-F1 and its exposure, the nested-OOF score of the rule the run chose, a
gold file's score of its submission, minutes and machine — sorted by OOF, written as Markdown, CSV and a plot of
each run's OOF with its folds' spread. The reference pipeline kept this table by hand."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_csv_atomic, write_text_atomic
from nikl_emotion.folders.folder_kind import describe, folder_kind
from nikl_emotion.folders.run_folder import RunFolder, StackFolder, read_mapping
from nikl_emotion.runs.finished_run import oof_exposure

__all__ = [
    "RunRow",
    "read_runs",
    "differing_keys",
    "table_records",
    "markdown_table",
    "write_run_table",
]

# every row shows these; the settings that differ are the others
_SHOWN = {"model_name_or_path": "backbone", "classifier_head": "head", "input_format": "input", "loss": "loss"}
# what differs between runs without changing what they learn
_NOT_SETTINGS = {
    "output_dir", "logging_dir", "run_name", "overwrite", "fold", "hub_model_id", "push_to_hub", "report_to",
    "test_file", "log_level", "log_level_replica", "dataloader_num_workers", "per_device_eval_batch_size",
    "hp_storage", "hp_study", "hp_heartbeat", "hp_report",
}  # fmt: skip


@dataclass
class RunRow:
    """One listed folder as the table reads it."""

    path: str
    kind: str  # "run", "stack", "hp search"
    config: dict
    folds: int | None = None
    oof: float | None = None
    oof_exposure: str | None = None
    nested: float | None = None  # the chosen rule's nested out-of-fold micro-F1
    fold_scores: list[float] = field(default_factory=list)
    gold: float | None = None
    minutes: float | None = None
    machine: str | None = None
    note: str = ""


def read_runs(paths: list[str], gold: str | None = None) -> tuple[list[RunRow], list[str]]:
    """(the rows, sorted by OOF micro-F1, best first; a line for each folder skipped and why)."""
    rows, skipped = [], []
    for path in paths:
        try:
            row = _read_row(path)
        except PipelineError as exc:
            skipped.append(str(exc))
            continue
        if gold is not None:
            _score_on_gold(row, gold)
        rows.append(row)
    rows.sort(key=lambda row: (row.oof is None, -(row.oof or 0.0)))
    return rows, skipped


def _read_row(path: str) -> RunRow:
    kind = folder_kind(path)
    run = RunFolder(path)
    if kind == "run" and os.path.isfile(run.summary):
        return _run_row(path)
    if kind == "run" and os.path.isfile(run.hp_config):
        return _search_row(path)
    if kind == "stack" and os.path.isfile(StackFolder(path).stack):
        return _stack_row(path)
    if kind in ("run", "stack"):
        raise PipelineError(f"{path}: an unfinished {kind} (no summary yet); skipped")
    if kind is None:
        what = "a folder no command of this pipeline made" if os.path.isdir(path) else "no such folder"
    else:
        what = describe(kind)
    raise PipelineError(f"{path}: not a run, stack or search ({what}); skipped")


def _run_row(path: str) -> RunRow:
    summary = read_mapping(RunFolder(path).summary)
    decision = summary.get("decision", {})
    chosen = next((c for c in decision.get("candidates", []) if c.get("name") == decision.get("chosen")), {})
    ran = summary.get("ran", {})
    machine = ran.get("machine", {})
    hardware = ", ".join(machine.get("gpus") or []) or (f"{machine['cpus']} CPUs" if machine.get("cpus") else "")
    row = RunRow(
        path,
        "run",
        summary.get("config", {}),
        folds=len(summary.get("folds", [])),
        oof=summary.get("oof", {}).get("micro_f1"),
        # a run summarised before the exposure was recorded: read from its config, as the stack does
        oof_exposure=summary.get("oof_exposure") or oof_exposure(summary.get("config", {})),
        nested=chosen.get("micro_f1"),
        fold_scores=[fold["micro_f1"] for fold in summary.get("folds", [])],
        minutes=None if "seconds" not in ran else ran["seconds"] / 60,
        machine=f"{machine.get('host', '')} ({hardware})" if machine else None,
    )
    if os.path.isfile(RunFolder(path).hp_config):
        row.note = "also holds an hp search"
    return row


def _stack_row(path: str) -> RunRow:
    stack = read_mapping(StackFolder(path).stack)
    members = stack.get("members", [])
    configs = [read_mapping(RunFolder(member["run"]).config) for member in members]
    scores = stack.get("oof_scores", {})
    choice = stack.get("decision", {}).get("choice", {})
    chosen = next((c for c in choice.get("candidates", []) if c.get("name") == choice.get("chosen")), {})
    config = {key: " + ".join(str(config.get(key)) for config in configs) for key in _SHOWN}
    return RunRow(
        path,
        "stack",
        config,
        folds=members[0].get("num_folds") if members else None,
        oof=scores.get("stack (nested)", {}).get("micro_f1"),
        oof_exposure=stack.get("oof_exposure"),
        nested=chosen.get("micro_f1"),
        note=f"stack of {len(members)} runs",
    )


def _search_row(path: str) -> RunRow:
    run = RunFolder(path)
    import yaml

    with open(run.hp_config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    rows = []
    if os.path.isfile(run.hp_table):
        with open(run.hp_table, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    complete = [float(r["micro_f1"]) for r in rows if r.get("state") == "COMPLETE" and r.get("micro_f1")]
    best = f"best micro-F1 {max(complete):.4f}" if complete else "no complete trial"
    folds = config.get("hp_folds") or [config.get("fold") or 0]
    on = ("folds " if len(folds) > 1 else "fold ") + ", ".join(map(str, folds))
    return RunRow(path, "hp search", config, note=f"hp search: {len(rows)} trials, {best} on {on}")


def _score_on_gold(row: RunRow, gold: str) -> None:
    """The run's (or stack's) submission scored on `gold` when it predicts that file's rows."""
    from nikl_emotion.decisions.metrics import score_files

    submission = os.path.join(row.path, "submission.jsonl")
    if not os.path.isfile(submission):
        return
    try:
        row.gold = score_files(gold, submission)["micro_f1"]
    except PipelineError:  # its test file is another one: no score rather than a wrong one
        row.gold = None


def differing_keys(rows: list[RunRow]) -> list[str]:
    """The settings whose values are not the same in every listed run (a key one run lacks counts as differing),
    besides the columns every row shows."""
    configs = [row.config for row in rows if row.kind != "stack"]
    keys = dict.fromkeys(key for config in configs for key in config)
    return [
        key
        for key in keys
        if key not in _SHOWN
        and key not in _NOT_SETTINGS
        and len({repr(config.get(key, "—")) for config in configs}) > 1
    ]


def table_records(rows: list[RunRow], with_gold: bool = False) -> list[dict]:
    """The rows as the table's columns, in order."""
    keys = differing_keys(rows)
    records = []
    for row in rows:
        record = {"run": row.path, "kind": row.kind}
        record |= {title: _cell(row.config.get(key)) for key, title in _SHOWN.items()}
        record |= {key: _cell(row.config.get(key, "—")) if row.kind != "stack" else "" for key in keys}
        record |= {
            "folds": row.folds or "",
            "oof_micro_f1": _number(row.oof),
            "oof_exposure": row.oof_exposure or "",
            "nested_oof_chosen_rule": _number(row.nested),
        }
        if with_gold:
            record["gold_micro_f1"] = _number(row.gold)
        record |= {"minutes": "" if row.minutes is None else f"{row.minutes:.2f}", "machine": row.machine or ""}
        record["note"] = row.note
        records.append(record)
    return records


def _cell(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "" if value is None else str(value)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown_table(records: list[dict]) -> str:
    if not records:
        return ""
    columns = list(records[0])
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(escape(record[c]) for c in columns) + " |" for record in records]
    return "\n".join(lines) + "\n"


def write_run_table(rows: list[RunRow], records: list[dict], output: str) -> list[str]:
    """The table as `output` (Markdown), beside it the same as CSV and a plot of each run's OOF micro-F1 with its
    folds' scores; returns the paths written."""
    base = os.path.splitext(output)[0]
    write_text_atomic(output, markdown_table(records))
    write_csv_atomic(f"{base}.csv", records)
    plotted = [row for row in rows if row.oof is not None]
    if plotted:
        _plot(plotted, f"{base}.png")
        return [output, f"{base}.csv", f"{base}.png"]
    return [output, f"{base}.csv"]


def _plot(rows: list[RunRow], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    for x, row in enumerate(rows):
        axes.scatter([x] * len(row.fold_scores), row.fold_scores, color="0.6", s=14, zorder=2)
        axes.scatter([x], [row.oof], color="tab:blue", marker="D", s=40, zorder=3)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([os.path.basename(os.path.normpath(row.path)) for row in rows], rotation=30, ha="right")
    axes.set_ylabel("micro-F1")
    axes.set_title("out-of-fold micro-F1 (diamond) and each fold's (grey)")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    staging = f"{path}.tmp.png"
    figure.savefig(staging, dpi=120)
    plt.close(figure)
    os.replace(staging, path)
