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

from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.labels import NUM_LABELS
from nikl_emotion.decisions.logistic import fit_label
from nikl_emotion.decisions.metrics import decide, score
from nikl_emotion.decisions.voting import is_number

__all__ = [
    "logits",
    "Stacker",
    "fit_stacker",
    "apply_stacker",
    "stack_runs",
    "choose_stack_rule",
]


_EPS = 1e-6


def logits(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, _EPS, 1 - _EPS)
    return np.log(clipped / (1 - clipped))


def _label_logits(features: list[np.ndarray], label: int) -> np.ndarray:
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
                z = _label_logits(features, j) @ np.asarray(label["weights"]) + label["bias"]
                columns.append(1.0 / (1.0 + np.exp(-z)))
        return np.stack(columns, axis=1)

    @property
    def members(self) -> int | None:
        return next((len(label["weights"]) for label in self.labels if "weights" in label), None)

    @classmethod
    def from_json(cls, data, source: str) -> Stacker:
        """The stacker saved in `source`, checked (a hand-edited file is refused, naming it)."""
        if not isinstance(data, list) or len(data) != NUM_LABELS:
            raise PipelineError(f"{source}: 'stacker' must list {NUM_LABELS} labels")
        for label in data:
            ok = isinstance(label, dict) and (
                (set(label) == {"constant"} and _is_finite_number(label["constant"]) and 0 <= label["constant"] <= 1)
                or (
                    set(label) == {"weights", "bias"}
                    and _is_finite_number(label["bias"])
                    and isinstance(label["weights"], list)
                    and label["weights"]
                    and all(_is_finite_number(w) for w in label["weights"])
                )
            )
            if not ok:
                raise PipelineError(
                    f"{source}: a stacker label must be {{'weights': [...], 'bias': b}} or "
                    f"{{'constant': p}} with finite numbers, got {label!r}"
                )
        stacker = cls(tuple(data))
        if len({len(label["weights"]) for label in data if "weights" in label}) > 1:
            raise PipelineError(f"{source}: the stacker's labels weigh different numbers of members")
        return stacker


def _is_finite_number(value) -> bool:
    return is_number(value) and bool(np.isfinite(value))


def fit_stacker(features: list[np.ndarray], gold: np.ndarray) -> Stacker:
    """Per label, a logistic regression on the members' logits for it (a constant for a one-class label)."""
    labels = []
    for j in range(NUM_LABELS):
        model = fit_label(_label_logits(features, j), gold[:, j], c=1.0, solver="lbfgs")
        labels.append(
            {"constant": model}
            if isinstance(model, float)
            else {"weights": [float(c) for c in model.coef_[0]], "bias": float(model.intercept_[0])}
        )
    return Stacker(tuple(labels))


def apply_stacker(stacker: Stacker, features: list[np.ndarray]) -> np.ndarray:
    return stacker.apply(features)


def stack_runs(members: list, gold: np.ndarray, threshold: float = 0.5, fallback: bool = True) -> dict:
    """`members`: each run's `.path`, `.oof`, `.fold_of_row` and `.fold_test` (`stack_run.RunMember`, of the same
    folds: `stack_run.check_same_folds`). Returns {"nested_oof": stacked OOF probabilities (each fold by a stacker
    fitted on the others), "fold_test": the final
    stacker applied to each fold's test probabilities, "scores": OOF micro/macro-F1 of each member and the stack}."""
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
    from nikl_emotion.decisions.decision import choose_rule
    from nikl_emotion.decisions.thresholds import FittedThresholds, fit_thresholds, nested_thresholds

    nested, gold = result["nested_oof"], np.asarray(gold).astype(bool)
    thresholds = FittedThresholds(
        nested_thresholds(nested, gold, fold_of_row, rule.fallback),
        fit_thresholds(nested, gold, fallback=rule.fallback),
    )
    return choose_rule(nested, gold, fold_of_row, thresholds, rule, "auto")
