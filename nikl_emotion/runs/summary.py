"""The end of a K-fold run: out-of-fold probabilities, fitted thresholds, summary.json, the voted submission and
the report, all rebuilt from the folds' files (so `report.py OUT` can redo it for a finished run)."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
from datasets import Dataset

from nikl_emotion.backends.model_card import write_model_card
from nikl_emotion.base.config import DecisionArguments, FoldArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic, write_probs
from nikl_emotion.base.labels import LABELS
from nikl_emotion.decisions.decision import choose_rule, fixed_rule
from nikl_emotion.decisions.metrics import score
from nikl_emotion.decisions.thresholds import (
    FittedThresholds,
    fit_global_threshold,
    fit_thresholds,
    nested_gain,
    nested_thresholds,
    save_thresholds,
)
from nikl_emotion.decisions.voting import ensemble_files
from nikl_emotion.folders.run_folder import RunFolder, input_digests, inputs_difference, read_mapping
from nikl_emotion.runs.finished_run import FinishedRun, fold_predictions, oof_exposure
from nikl_emotion.runs.report import write_report

__all__ = [
    "record_how_it_ran",
    "this_machine",
    "summarize",
    "rebuild_run",
]


def summarize(
    output_dir: str, train_rows: Dataset, test_path: str | None, num_folds: int, decision_args: DecisionArguments
) -> dict | None:
    """OOF probabilities, summary.json and (with a test file) the hard-voted submission; None until all folds exist."""
    run = RunFolder(output_dir)
    metric_paths = [run.fold(k).metrics for k in range(num_folds)]
    if not all(os.path.exists(p) for p in metric_paths):
        return None
    folds = []
    for path in metric_paths:
        with open(path, encoding="utf-8") as handle:
            folds.append(json.load(handle))
    ids = train_rows["id"]
    oof, fold_of_row = fold_predictions(output_dir, ids, num_folds)
    write_probs(run.oof, ids, oof)
    gold = np.asarray(train_rows["labels"])
    fallback = decision_args.fallback_top_label
    global_threshold = fit_global_threshold(oof, gold, fallback=fallback)
    per_label = fit_thresholds(oof, gold, fallback=fallback, start=global_threshold)
    fitted = nested_thresholds(oof, gold, fold_of_row, fallback)  # per fold, on the other folds' rows
    evaluation = nested_gain(oof, gold, fold_of_row, fallback, default=decision_args.threshold, fitted=fitted)
    save_thresholds(run.thresholds, per_label, global_threshold, evaluation)
    # the rule submission.jsonl is made with (decision: auto chooses it on nested OOF scores), saved so
    # inference.py --run OUT and ensemble.py --decision decide the same way anywhere
    thresholds = FittedThresholds(fitted, per_label)
    fixed = fixed_rule(decision_args)
    decision, choice = choose_rule(oof, gold, fold_of_row, thresholds, fixed, decision_args.decision)
    decision.save(run.decision)
    summary = {
        "folds": folds,
        "oof": score(gold, fixed.decide(oof)),
        "thresholds": {"file": os.path.basename(run.thresholds), **evaluation},
        "decision": {"file": os.path.basename(run.decision), **choice},
    }
    if test_path is not None:
        voted = ensemble_files(
            [run.fold(k).test_probs for k in range(num_folds)], run.submission, decision, reference_path=test_path
        )
        summary["submission"] = {
            "file": os.path.basename(run.submission),
            "rows": int(len(voted)),
            "rule": choice["chosen"],
        }
    summary["config"] = read_mapping(run.config)
    summary["oof_exposure"] = oof_exposure(summary["config"])  # what the OOF scores and the rule fitted on them saw
    if "ran" in (earlier := read_mapping(run.summary)):  # how the run ran, kept when report.py rebuilds the end
        summary["ran"] = earlier["ran"]
    write_json_atomic(run.summary, summary)
    thresholds = {"per_label": dict(zip(LABELS, map(float, per_label))), "global": float(global_threshold)}
    for fold in folds:  # each fold's card gains the run's out-of-fold score and fitted thresholds
        best = run.fold(fold["fold"]).best
        if os.path.isfile(os.path.join(best, "config.json")):  # a Hugging Face model (not the n-gram member)
            write_model_card(best, summary["config"], fold["fold"], fold, summary["oof"], thresholds)
    write_report(output_dir, summary, gold=gold, oof=oof, thresholds=per_label, decision_args=decision_args)
    return summary


def record_how_it_ran(output_dir: str, seconds: float, processes: int) -> dict:
    """summary.json's `ran`: the seconds of the train.py command that finished the run (a run resumed or trained
    fold by fold: that command's alone) and the machine it ran on, for the table of runs."""
    ran = {"seconds": round(seconds, 1), "machine": this_machine(), "processes": processes}
    run = RunFolder(output_dir)
    write_json_atomic(run.summary, {**read_mapping(run.summary), "ran": ran})
    return ran


def this_machine() -> dict:
    """The machine a command ran on, as its records name it: host, CPU model, CPU count, GPUs."""
    import platform
    import socket

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    return {"host": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(), "gpus": gpus}


def rebuild_run(output_dir: str) -> dict:
    """Summarise a finished run again from its config.yaml and fold files (thresholds, submission, report)."""
    import dataclasses

    run = FinishedRun.open(output_dir, "report.py", summarised=False)  # it rewrites the run's end, not another's

    # a run from before `decision` existed was submitted with the fixed rule: rebuild it the same way
    def recorded_keys(part) -> dict:
        return {f.name: run.config[f.name] for f in dataclasses.fields(part) if f.name in run.config}

    decision_args = DecisionArguments(**{"decision": "fixed", **recorded_keys(DecisionArguments)})
    num_folds = FoldArguments(**recorded_keys(FoldArguments)).num_folds
    recorded = run.inputs
    difference = inputs_difference(recorded, input_digests([p for p in recorded if os.path.isfile(p)]))
    if difference is not None:
        raise PipelineError(f"{output_dir}: {difference}; the report would mix two versions of the data")
    summary = summarize(output_dir, run.train_rows(), run.test_file, num_folds, decision_args)
    if summary is None:
        raise PipelineError(f"{output_dir}: not every fold has finished (fold_K/metrics.json missing)")
    return summary
