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
from dataclasses import dataclass

import numpy as np

from nikl_emotion.errors import PipelineError
from nikl_emotion.labels import NUM_LABELS
from nikl_emotion.metrics import decide, score
from nikl_emotion.finished_run import FinishedRun
from nikl_emotion.ngram import fit_label

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
        run = FinishedRun.open(run_dir, "--runs", with_test=True)
        oof, fold_of_row = run.oof(ids, changed="stack runs of the same training files")
        test_ids, fold_test = run.fold_test()
        return cls(run_dir, list(ids), oof, fold_of_row, test_ids, fold_test, run.config, run.inputs)


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


@dataclass(frozen=True)
class Stacker:
    """Per label, a weight per member and a bias over the members' logits for that label (a logistic regression), or
    a constant probability where the training rows held one class only. Saved in a stack's stack.json."""

    labels: tuple[dict, ...]  # {"weights": [w per member], "bias": b} or {"constant": p}

    def apply(self, features: list[np.ndarray]) -> np.ndarray:
        """(rows, labels) probabilities from each member's (rows, labels) probabilities."""
        columns = []
        for j, label in enumerate(self.labels):
            if "constant" in label:
                columns.append(np.full(features[0].shape[0], label["constant"]))
            else:
                z = label_logits(features, j) @ np.asarray(label["weights"]) + label["bias"]
                columns.append(1.0 / (1.0 + np.exp(-z)))
        return np.stack(columns, axis=1)

    @property
    def members(self) -> int | None:
        return next((len(label["weights"]) for label in self.labels if "weights" in label), None)

    @classmethod
    def from_json(cls, data, source: str) -> "Stacker":
        """The stacker saved in `source`, checked (a hand-edited file is refused, naming it)."""
        if not isinstance(data, list) or len(data) != NUM_LABELS:
            raise PipelineError(f"{source}: 'stacker' must list {NUM_LABELS} labels")
        for label in data:
            ok = isinstance(label, dict) and (
                (set(label) == {"constant"} and is_number(label["constant"]) and 0 <= label["constant"] <= 1)
                or (set(label) == {"weights", "bias"} and is_number(label["bias"]) and isinstance(label["weights"], list)
                    and label["weights"] and all(is_number(w) for w in label["weights"])))
            if not ok:
                raise PipelineError(f"{source}: a stacker label must be {{'weights': [...], 'bias': b}} or "
                                    f"{{'constant': p}} with finite numbers, got {label!r}")
        stacker = cls(tuple(data))
        if len({len(label["weights"]) for label in data if "weights" in label}) > 1:
            raise PipelineError(f"{source}: the stacker's labels weigh different numbers of members")
        return stacker


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def fit_stacker(features: list[np.ndarray], gold: np.ndarray) -> Stacker:
    """Per label, a logistic regression on the members' logits for it (a constant for a one-class label)."""
    labels = []
    for j in range(NUM_LABELS):
        model = fit_label(label_logits(features, j), gold[:, j], c=1.0, solver="lbfgs")
        labels.append({"constant": model} if isinstance(model, float) else
                      {"weights": [float(c) for c in model.coef_[0]], "bias": float(model.intercept_[0])})
    return Stacker(tuple(labels))


def apply_stacker(stacker: Stacker, features: list[np.ndarray]) -> np.ndarray:
    return stacker.apply(features)


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
    return {"nested_oof": nested, "fold_test": fold_test, "scores": scores, "stacker": final}


def choose_stack_rule(result: dict, gold: np.ndarray, fold_of_row: np.ndarray, rule) -> tuple:
    """(the rule chosen on the stack's nested OOF probabilities, its record), `rule` being the fixed candidate."""
    from nikl_emotion.decision import choose_rule
    from nikl_emotion.thresholds import fit_thresholds, nested_thresholds

    nested, gold = result["nested_oof"], np.asarray(gold).astype(bool)
    return choose_rule(nested, gold, fold_of_row, nested_thresholds(nested, gold, fold_of_row, rule.fallback),
                       fit_thresholds(nested, gold, fallback=rule.fallback), rule, "auto")
