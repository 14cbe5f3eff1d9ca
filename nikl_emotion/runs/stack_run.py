"""The stack as a run: `ensemble.py --runs A B ... --strategy stack --output_dir S` writes a folder that names its
member runs (where they are and a fingerprint of their results), the stacker's per-label weights, the rule chosen on
the stack's nested OOF (`decision.json`) and the submission for the members' test file. `open_stack` reads it back
for `inference.py --run S` and `EmotionClassifier.from_pretrained(S)`: fold K of the stack is the stacker applied to
fold K of every member, and the folds are voted by the saved rule, as the submission was made.

A member run that was moved, deleted, trained again or edited is refused by name: the stacker's weights were fitted
on that run's out-of-fold probabilities and mean nothing for another model. (A stack moved together with its
members, as one tree, still opens: each member is also found by its path relative to the stack.)

`--output FILE` without `--output_dir` stays the shortcut that writes only the submission.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import (
    check_distinct_paths,
    check_output_path,
    file_digest,
    write_json_atomic,
    write_probs,
    write_submission,
)
from nikl_emotion.base.labels import LABELS
from nikl_emotion.decisions.stacking import Stacker, choose_stack_rule, stack_runs
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.folders.folder_kind import check_output_folder, folder_kind, mark_folder, require_kind
from nikl_emotion.folders.run_folder import StackFolder, read_mapping
from nikl_emotion.runs.finished_run import OOF_CHOSE_EPOCH, OOF_UNSEEN, FinishedRun, oof_exposure
from nikl_emotion.text.data import iter_inputs, load_jsonl

__all__ = [
    "RunMember",
    "check_same_folds",
    "stacked_oof_exposure",
    "stack_files",
    "open_stack",
]


@dataclass
class RunMember:
    """A finished train.py run as a stacking input: its OOF probabilities and each fold's test probabilities."""

    path: str
    ids: list[str]
    oof: np.ndarray
    fold_of_row: np.ndarray
    test_ids: list[str]
    fold_test: list[np.ndarray]
    config: dict = dataclasses.field(default_factory=dict)  # the run's config.yaml
    inputs: dict = dataclasses.field(default_factory=dict)  # its inputs.json: {path: sha256} at training time

    @classmethod
    def load(cls, run_dir: str, ids: list[str]) -> RunMember:
        """The run's fold files, its OOF rows in the order of `ids` (the training rows)."""
        run = FinishedRun.open(run_dir, "--runs", with_test=True)
        oof, fold_of_row = run.oof(ids, changed="stack runs of the same training files")
        test_ids, fold_test = run.fold_test()
        return cls(run_dir, list(ids), oof, fold_of_row, test_ids, fold_test, run.config, run.inputs)


def stacked_oof_exposure(exposures: list[str]) -> str:
    """The stack's out-of-fold exposure: unseen only when every member's is."""
    return OOF_UNSEEN if all(exposure == OOF_UNSEEN for exposure in exposures) else OOF_CHOSE_EPOCH


def check_same_folds(members: list[RunMember]) -> None:
    """Stacking needs the same training rows in the same folds and the same test rows in every run, and members that
    are different models (no two with the same out-of-fold probabilities)."""
    first = members[0]
    for other in members[1:]:
        if other.ids != first.ids:
            raise PipelineError(
                f"{other.path}: its training rows differ from {first.path}'s: stack runs of the same files"
            )
        if not np.array_equal(other.fold_of_row, first.fold_of_row):
            raise PipelineError(
                f"{other.path}: its folds differ from {first.path}'s ({_why_folds_differ(first, other)}): "
                "a stacker fitted on mismatched folds would see rows a member trained on"
            )
        if other.test_ids != first.test_ids:
            raise PipelineError(f"{other.path}: its test rows differ from {first.path}'s")
    for j, other in enumerate(members):
        for earlier in members[:j]:
            if np.array_equal(other.oof, earlier.oof):
                raise PipelineError(
                    f"{other.path}: its out-of-fold probabilities are {earlier.path}'s to the last digit (a copy of "
                    "that run?): a stack would count one model twice and its nested estimate would rise for nothing"
                )


def _why_folds_differ(first: RunMember, other: RunMember) -> str:
    """What made two runs' folds differ: the fold count or seed, or the training rows' labels (the folds are
    stratified by label)."""
    for key in ("num_folds", "seed"):
        if first.config.get(key) != other.config.get(key):
            return f"{key} {first.config.get(key)} vs {other.config.get(key)}"
    first_files = {path: first.inputs.get(path) for path in first.config.get("train_files", [])}
    other_files = {path: other.inputs.get(path) for path in other.config.get("train_files", [])}
    if first_files != other_files:
        return (
            "same num_folds and seed, but they were trained on other contents of the training files (the folds "
            "are stratified by label): a file changed between the runs"
        )
    return "same num_folds, seed and labels: the runs were made by different versions of the fold split"


@dataclass(frozen=True)
class _OpenedStack:
    """A stack folder read back: its member runs (checked unchanged), the stacker and the folds' decision rule."""

    path: str
    members: list[FinishedRun]
    stacker: Stacker
    rule: DecisionRule

    @property
    def fold_checkpoints(self) -> list[list[str]]:
        """Per fold, each member's checkpoint for that fold (the stacker's inputs, in the members' order)."""
        per_member = [member.checkpoints for member in self.members]
        return [list(fold) for fold in zip(*per_member)]


def _check_stack_request(
    run_dirs: list[str], output_path: str | None, probs_path: str | None, output_dir: str | None
) -> None:
    """Before anything is read: two or more different runs, and outputs that replace none of their files."""
    if len(run_dirs) < 2:
        raise PipelineError("--strategy stack needs at least two runs (--runs OUT_A OUT_B ...)")
    seen: dict[str, str] = {}
    for path in run_dirs:
        if os.path.realpath(path) in seen:
            raise PipelineError(
                f"--runs: {path} is the same run as {seen[os.path.realpath(path)]}: a stack needs "
                "two or more different runs"
            )
        seen[os.path.realpath(path)] = path
    check_distinct_paths(
        {f"--runs {path}": path for path in run_dirs}, {"--output": output_path, "--probs": probs_path}
    )
    for option, path in (("--output", output_path), ("--probs", probs_path)):
        if path is not None:
            check_output_path(path, option)
            _check_outside_runs(path, option, run_dirs)
    if output_dir is not None:
        check_output_folder(output_dir, "stack", option="--output_dir")  # inside a member run: refused there


def _check_outside_runs(path: str, option: str, run_dirs: list[str]) -> None:
    """An output inside a run being stacked would replace one of the files read from it (a fold's probabilities,
    its submission): refuse it before anything is read or written."""
    target = os.path.realpath(path)
    for run_dir in run_dirs:
        run = os.path.realpath(run_dir)
        if os.path.commonpath([target, run]) == run:
            raise PipelineError(f"{path}: {option} lies inside {run_dir}, a run that --runs reads: write it elsewhere")


def stack_files(
    run_dirs: list[str],
    output_path: str | None,
    rule: DecisionRule,
    probs_path: str | None = None,
    choose: bool = False,
    output_dir: str | None = None,
) -> dict:
    """Stack finished runs for their test file: fitted on OOF only, each fold's stacked test probabilities decided
    and voted by `rule`, or with `choose` by the rule chosen on the stack's nested OOF (`rule` is then the fixed
    candidate; `result["decision"]` holds the record). With `output_dir` the stack is written as a servable folder
    (`_write_stack_folder`), else the submission to `output_path` (and the mean probabilities to `probs_path`).
    Returns `stack_runs`' result plus the rule and the decisions."""
    _check_stack_request(run_dirs, output_path, probs_path, output_dir)
    first = FinishedRun.open(run_dirs[0], "--runs", with_test=True)
    train = first.train_rows()
    members = [RunMember.load(path, train["id"]) for path in run_dirs]
    if not os.path.isfile(first.test_file):
        raise PipelineError(f"{run_dirs[0]}: its test_file {first.test_file!r} is needed for the submission's inputs")
    test = load_jsonl(first.test_file, "optional")
    if test["id"] != members[0].test_ids:
        raise PipelineError(f"{first.test_file}: its rows differ from the runs' test probabilities")
    gold = np.asarray(train["labels"])
    check_same_folds(members)
    result = stack_runs(members, gold, rule.threshold if np.ndim(rule.threshold) == 0 else 0.5, rule.fallback)
    # the stacker, its rule and its nested estimate are fitted on the members' OOF: as honest as the least of them
    result["oof_exposures"] = [oof_exposure(member.config) for member in members]
    if choose:
        rule, result["decision"] = choose_stack_rule(result, gold, members[0].fold_of_row, rule)
    result["rule"] = rule
    result["decisions"] = rule.apply(result["fold_test"])
    if output_dir is not None:
        _write_stack_folder(output_dir, run_dirs, result, test, first.test_file, choose)
        return result
    if probs_path:
        write_probs(probs_path, test["id"], rule.mean(result["fold_test"]))
    write_submission(output_path, test["id"], iter_inputs(test), result["decisions"])
    return result


def _write_stack_folder(output_dir: str, run_dirs: list[str], result: dict, test, test_file: str, chosen: bool) -> None:
    """The stack's folder; stack.json, written last, makes it a finished stack (a rewrite removes it first)."""
    mark_folder(output_dir, "stack")
    folder = StackFolder(output_dir)
    if os.path.exists(folder.stack):
        os.unlink(folder.stack)
    rule = result["rule"]
    rule.save(folder.decision)
    write_probs(folder.test_probs, test["id"], rule.mean(result["fold_test"]))
    write_submission(folder.submission, test["id"], iter_inputs(test), result["decisions"])
    stack_root = os.path.realpath(output_dir)
    members = []
    for given, exposure in zip(run_dirs, result["oof_exposures"]):
        run = FinishedRun.open(given, "--runs")
        members.append(
            {
                "run": os.path.realpath(given),
                "relative_to_stack": os.path.relpath(os.path.realpath(given), stack_root),
                "num_folds": run.num_folds,
                "fingerprint": run.fingerprint(),
                "oof_exposure": exposure,
            }
        )
    write_json_atomic(
        folder.stack,
        {
            "members": members,
            "labels": list(LABELS),
            "stacker": list(result["stacker"].labels),
            "decision": {
                "file": os.path.basename(folder.decision),
                "chosen_on_nested_oof": chosen,
                **({"choice": result["decision"]} if chosen else {}),
            },
            "oof_scores": result["scores"],
            "oof_exposure": stacked_oof_exposure(result["oof_exposures"]),
            "test_file": test_file,
            "test_file_sha256": file_digest(test_file),
            "submission": os.path.basename(folder.submission),
        },
    )


def open_stack(path: str, option: str = "--run") -> _OpenedStack:
    """A finished stack folder with its members checked: present, finished and unchanged since the stack was made."""
    require_kind(path, "stack", option)
    folder = StackFolder(path)
    data = read_mapping(folder.stack)
    if not data:
        raise PipelineError(
            f"{option}: {path} is not a finished stack (no {os.path.basename(folder.stack)}; "
            "python ensemble.py --runs A B --strategy stack --output_dir DIR writes one)"
        )
    if data.get("labels") != list(LABELS):
        raise PipelineError(
            f"{folder.stack}: its labels {data.get('labels')} differ from this pipeline's {list(LABELS)}"
        )
    recorded = data.get("members")
    if not isinstance(recorded, list) or len(recorded) < 2 or not all(isinstance(m, dict) for m in recorded):
        raise PipelineError(f"{folder.stack}: 'members' must list two or more member runs")
    members = [_open_member(path, member, option) for member in recorded]
    stacker = Stacker.from_json(data.get("stacker"), folder.stack)
    if stacker.members not in (None, len(members)):
        raise PipelineError(
            f"{folder.stack}: the stacker weighs {stacker.members} members, the stack lists {len(members)}"
        )
    if len({member.num_folds for member in members}) != 1:
        raise PipelineError(f"{folder.stack}: its member runs have different numbers of folds")
    rule = DecisionRule.load(folder.decision)
    try:
        rule.check_models(members[0].num_folds)
    except PipelineError as exc:
        raise PipelineError(f"{folder.decision}: {exc}") from None
    return _OpenedStack(path, members, stacker, rule)


def _open_member(stack_path: str, member: dict, option: str) -> FinishedRun:
    """One member run, found where it was (or at the same place relative to the stack) and unchanged."""
    recorded_path, relative = member.get("run"), member.get("relative_to_stack")
    fingerprint = member.get("fingerprint")
    if not isinstance(recorded_path, str) or not isinstance(fingerprint, dict):
        raise PipelineError(f"{StackFolder(stack_path).stack}: a member needs 'run' (a path) and 'fingerprint'")
    candidates = [recorded_path] + ([os.path.join(stack_path, relative)] if isinstance(relative, str) else [])
    found = next((p for p in candidates if os.path.isdir(p) and folder_kind(p) == "run"), None)
    rebuild = f"stack the runs again: python ensemble.py --runs ... --strategy stack --output_dir {stack_path}"
    if found is None:
        raise PipelineError(
            f"{option}: {stack_path}'s member run {recorded_path} is not there (moved or deleted since "
            f"the stack was made); {rebuild}"
        )
    run = FinishedRun.open(found, f"{option} {stack_path}: member")
    now = run.fingerprint()
    changed = next(
        (name for name in sorted(set(fingerprint) | set(now)) if fingerprint.get(name) != now.get(name)), None
    )
    if changed is not None:
        raise PipelineError(
            f"{option}: {stack_path}'s member run {found} changed since the stack was made (its "
            f"{changed} differs): the stacker's weights were fitted on the old results; {rebuild}"
        )
    return run
