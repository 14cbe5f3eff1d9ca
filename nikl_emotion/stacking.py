"""Stacking finished runs of the same folds (`ensemble.py --runs A B ... --strategy stack`).

Per label, a logistic regression on the runs' logits for that label (a weight per run and a bias) is fitted on the
runs' out-of-fold probabilities only. Its own score is estimated the same way: each fold's OOF rows are stacked by a
regression fitted on the other folds' rows (`nested` figures). For the test file the final regression (fitted on all
OOF rows) is applied to each fold's test probabilities — single models' probabilities, like the OOF ones it was
fitted on — and the folds' stacked probabilities are then decided and voted by the given `DecisionRule`, or (with
`choose`) by the rule `decision.choose_rule` picks on the stack's nested OOF probabilities, as `decision: auto` does
for a run. The thresholds that choice fits for a fold's rows come from the other folds' stacked rows, whose stackers
saw that fold's member probabilities (not its labels' use in the stacker of its own rows): a second-order optimism
the estimate carries.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from nikl_emotion.errors import PipelineError
from nikl_emotion.fileio import read_probs
from nikl_emotion.labels import NUM_LABELS
from nikl_emotion.metrics import decide, score
from nikl_emotion.ngram import fit_label, label_probability
from nikl_emotion.folder_kind import require_kind
from nikl_emotion.run_folder import RunFolder, read_mapping

EPS = 1e-6


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
    def load(cls, run_dir: str, ids: list[str]) -> "RunMember":
        """The run's fold files, its OOF rows in the order of `ids` (the training rows)."""
        from nikl_emotion.summary import fold_predictions

        require_kind(run_dir, "run", "--runs")
        run = RunFolder(run_dir)
        config = read_mapping(run.config)
        if not config or not os.path.isfile(run.oof):
            raise PipelineError(f"{run_dir}: not a finished train.py run (needs {os.path.basename(run.config)} and "
                                f"{os.path.basename(run.oof)})")
        num_folds = int(config.get("num_folds", 0))
        oof, fold_of_row = fold_predictions(run_dir, ids, num_folds, changed="stack runs of the same training files")
        fold_test, test_ids = [], None
        for k in range(num_folds):
            if not os.path.isfile(run.fold(k).test_probs):
                raise PipelineError(f"{run_dir}: fold {k} has no test probabilities (the run had no test_file)")
            ids_k, probs_k = read_probs(run.fold(k).test_probs)
            if test_ids is not None and ids_k != test_ids:
                raise PipelineError(f"{run.fold(k).test_probs}: other test rows than fold 0's")
            test_ids = ids_k
            fold_test.append(probs_k)
        return cls(run_dir, list(ids), oof, fold_of_row, test_ids or [], fold_test, config, read_mapping(run.inputs))


def check_same_folds(members: list[RunMember]) -> None:
    """Stacking needs the same training rows in the same folds and the same test rows in every run."""
    first = members[0]
    for other in members[1:]:
        if other.ids != first.ids:
            raise PipelineError(f"{other.path}: its training rows differ from {first.path}'s: stack runs of the same files")
        if not np.array_equal(other.fold_of_row, first.fold_of_row):
            raise PipelineError(f"{other.path}: its folds differ from {first.path}'s ({why_folds_differ(first, other)}): "
                                "a stacker fitted on mismatched folds would see rows a member trained on")
        if other.test_ids != first.test_ids:
            raise PipelineError(f"{other.path}: its test rows differ from {first.path}'s")


def why_folds_differ(first: RunMember, other: RunMember) -> str:
    """What made two runs' folds differ: the fold count or seed, or the training rows' labels (the folds are
    stratified by label)."""
    for key in ("num_folds", "seed"):
        if first.config.get(key) != other.config.get(key):
            return f"{key} {first.config.get(key)} vs {other.config.get(key)}"
    first_files = {path: first.inputs.get(path) for path in first.config.get("train_files", [])}
    other_files = {path: other.inputs.get(path) for path in other.config.get("train_files", [])}
    if first_files != other_files:
        return ("same num_folds and seed, but they were trained on other contents of the training files (the folds "
                "are stratified by label): a file changed between the runs")
    return "same num_folds, seed and labels: the runs were made by different versions of the fold split"


def logits(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, EPS, 1 - EPS)
    return np.log(clipped / (1 - clipped))


def label_logits(features: list[np.ndarray], label: int) -> np.ndarray:
    """(rows, members): each member's logit for `label`, the stacker's input for that label."""
    return np.stack([logits(member[:, label]) for member in features], axis=1)


def fit_stacker(features: list[np.ndarray], gold: np.ndarray) -> list:
    """Per label, a logistic regression on the members' logits for it (a constant for a one-class label)."""
    return [fit_label(label_logits(features, j), gold[:, j], c=1.0, solver="lbfgs") for j in range(NUM_LABELS)]


def apply_stacker(models: list, features: list[np.ndarray]) -> np.ndarray:
    return np.stack([label_probability(model, label_logits(features, j)) for j, model in enumerate(models)], axis=1)


def stack_runs(members: list[RunMember], gold: np.ndarray, threshold: float = 0.5, fallback: bool = True) -> dict:
    """{"nested_oof": stacked OOF probabilities (each fold by a stacker fitted on the others), "fold_test": the final
    stacker applied to each fold's test probabilities, "scores": OOF micro/macro-F1 of each member and the stack}."""
    check_same_folds(members)
    gold = np.asarray(gold).astype(bool)
    fold_of_row = members[0].fold_of_row
    nested = np.zeros(gold.shape)
    for k in np.unique(fold_of_row):
        held = fold_of_row == k
        models = fit_stacker([m.oof[~held] for m in members], gold[~held])
        nested[held] = apply_stacker(models, [m.oof[held] for m in members])
    final = fit_stacker([m.oof for m in members], gold)
    fold_test = [apply_stacker(final, [m.fold_test[k] for m in members]) for k in range(len(members[0].fold_test))]
    scores = {m.path: score(gold, decide(m.oof, threshold, fallback)) for m in members}
    scores["mean of the runs"] = score(gold, decide(np.mean([m.oof for m in members], axis=0), threshold, fallback))
    scores["stack (nested)"] = score(gold, decide(nested, threshold, fallback))
    weights = [[float(c) for c in model.coef_[0]] if not isinstance(model, float) else None for model in final]
    return {"nested_oof": nested, "fold_test": fold_test, "scores": scores, "weights": weights}


def check_outside_runs(path: str, option: str, run_dirs: list[str]) -> None:
    """An output inside a run being stacked would replace one of the files read from it (a fold's probabilities,
    its submission): refuse it before anything is read or written."""
    target = os.path.realpath(path)
    for run_dir in run_dirs:
        run = os.path.realpath(run_dir)
        if os.path.commonpath([target, run]) == run:
            raise PipelineError(f"{path}: {option} lies inside {run_dir}, a run that --runs reads: write it elsewhere")


def choose_stack_rule(result: dict, gold: np.ndarray, fold_of_row: np.ndarray, rule) -> tuple:
    """(the rule chosen on the stack's nested OOF probabilities, its record), `rule` being the fixed candidate."""
    from nikl_emotion.decision import choose_rule
    from nikl_emotion.thresholds import fit_thresholds, nested_thresholds

    nested, gold = result["nested_oof"], np.asarray(gold).astype(bool)
    return choose_rule(nested, gold, fold_of_row, nested_thresholds(nested, gold, fold_of_row, rule.fallback),
                       fit_thresholds(nested, gold, fallback=rule.fallback), rule, "auto")


def stack_files(run_dirs: list[str], output_path: str, rule, probs_path: str | None = None, choose: bool = False) -> dict:
    """Stack finished runs into a submission for their test file: fitted on OOF only, each fold's stacked test
    probabilities decided and voted by `rule` (a `DecisionRule`), or with `choose` by the rule chosen on the
    stack's nested OOF (`rule` is then the fixed candidate; `result["decision"]` holds the record). Returns
    `stack_runs`' result plus the decisions."""
    from nikl_emotion.data import iter_inputs, load_jsonl, load_jsonl_files
    from nikl_emotion.fileio import check_distinct_paths, check_output_path, write_probs, write_submission

    if len(run_dirs) < 2:
        raise PipelineError("--strategy stack needs at least two runs (--runs OUT_A OUT_B ...)")
    seen: dict[str, str] = {}
    for path in run_dirs:
        if os.path.realpath(path) in seen:
            raise PipelineError(f"--runs: {path} is the same run as {seen[os.path.realpath(path)]}: a stack needs "
                                "two or more different runs")
        seen[os.path.realpath(path)] = path
    check_distinct_paths({f"--runs {path}": path for path in run_dirs}, {"--output": output_path, "--probs": probs_path})
    for option, path in (("--output", output_path), ("--probs", probs_path)):
        if path is not None:
            check_output_path(path, option)
            check_outside_runs(path, option, run_dirs)
    config = read_mapping(RunFolder(run_dirs[0]).config)
    if not config.get("train_files"):
        raise PipelineError(f"{run_dirs[0]}: not a finished train.py run (no {os.path.basename(RunFolder('').config)})")
    train = load_jsonl_files(config["train_files"], "required")
    members = [RunMember.load(path, train["id"]) for path in run_dirs]
    test_file = config.get("test_file")
    if not test_file or not os.path.isfile(test_file):
        raise PipelineError(f"{run_dirs[0]}: its test_file {test_file!r} is needed for the submission's inputs")
    test = load_jsonl(test_file, "optional")
    if test["id"] != members[0].test_ids:
        raise PipelineError(f"{test_file}: its rows differ from the runs' test probabilities")
    result = stack_runs(members, np.asarray(train["labels"]), rule.threshold if np.ndim(rule.threshold) == 0 else 0.5,
                        rule.fallback)
    if choose:
        rule, result["decision"] = choose_stack_rule(result, np.asarray(train["labels"]), members[0].fold_of_row, rule)
    result["rule"] = rule
    result["decisions"] = rule.apply(result["fold_test"])
    if probs_path:
        write_probs(probs_path, test["id"], rule.mean(result["fold_test"]))
    write_submission(output_path, test["id"], iter_inputs(test), result["decisions"])
    return result
