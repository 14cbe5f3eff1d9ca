"""Voting several models' predictions into one: hard (decisions) or soft (mean probability, then thresholds).

Rules (`rule`):
- `majority` (default): a label is on when more than half the models vote for it. With an even number of
  models a label with exactly half the votes is a tie, settled by `tie`: `positive` (on, the default, as the
  reference's `votes >= n/2`) or `negative` (off).
- `reference`: the reference pipeline's rule, reproduced exactly (unweighted; no fallback of this project's).
  Up to 3 models: per row, the label(s) with the most votes (all of them if several share the maximum), and joy
  alone when no model votes for anything; more than 3 models: labels with votes >= n/2, a row where none reaches
  n/2 staying empty.

A row left with no label under `majority` or `min_votes` falls back, unless disabled, to the label(s) with the
most votes, and among those to the one with the highest mean probability when probabilities are known, else the
first in label order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.errors import PipelineError, RowError
from nikl_emotion.base.fileio import (
    check_distinct_paths,
    check_output_path,
    iter_json_lines,
    read_probs,
    write_json_atomic,
    write_submission,
)
from nikl_emotion.base.vocabulary import (
    DEFAULT_STRATEGY,
    DEFAULT_VOTE_RULE,
    DEFAULT_VOTE_TIE,
    STRATEGIES,
    VOTE_RULES,
    VOTE_TIES,
    check_choice,
)
from nikl_emotion.decisions.metrics import decide
from nikl_emotion.text.data import load_jsonl

__all__ = [
    "hard_vote",
    "DecisionRule",
    "is_number",
    "align_by_id",
    "ensemble_files",
]


def hard_vote(
    decisions: Sequence[np.ndarray], rule: DecisionRule | None = None, mean_probs: np.ndarray | None = None
) -> np.ndarray:
    """Vote (N, 8) boolean decisions of several models into one by `rule`'s `vote_rule`, `vote_tie`, `fallback`,
    `weights` and `min_votes` (default: `DecisionRule()`, a majority with ties on). `weights` (one per model, default
    1) make each model count that many votes against half the total weight; `min_votes` replaces the rule by a
    fixed bar; `mean_probs`, when known, breaks the fallback's ties."""
    rule = rule or DecisionRule()
    vote_rule, tie, fallback, weights, min_votes = (
        rule.vote_rule,
        rule.vote_tie,
        rule.fallback,
        rule.weights,
        rule.min_votes,
    )
    if not decisions:
        raise ValueError("hard voting needs at least one model")
    stacked = np.stack([np.asarray(d, dtype=bool) for d in decisions]).astype(np.float64)
    _check_vote_options(len(stacked), weights, min_votes)
    weights = np.ones(len(stacked)) if weights is None else np.asarray(weights, dtype=np.float64)
    votes = np.tensordot(weights, stacked, axes=1)
    half = weights.sum() / 2
    is_half = np.isclose(votes, half)
    if vote_rule == "reference" and min_votes is None:
        if not np.allclose(weights, 1.0):
            raise PipelineError("the reference vote rule counts every model once: it takes no weights")
        return _reference_vote(stacked.astype(bool))
    if min_votes is not None:
        voted = (votes >= min_votes) | np.isclose(votes, min_votes)
    elif vote_rule == "majority":
        voted = (votes > half) & ~is_half
        if tie == "positive":
            voted |= is_half
        elif tie != "negative":
            raise ValueError(f"unknown tie rule {tie!r}; choose positive or negative")
    else:
        raise ValueError(f"unknown vote rule {vote_rule!r}; choose majority or reference")
    if fallback:
        empty = np.flatnonzero(~voted.any(axis=1))
        if len(empty):
            # the most-voted labels; among them the highest mean probability, else the first in label order
            most = np.isclose(votes[empty], votes[empty].max(axis=1, keepdims=True))
            tiebreak = np.zeros(most.shape) if mean_probs is None else np.asarray(mean_probs, dtype=np.float64)[empty]
            voted[empty, np.where(most, tiebreak, -np.inf).argmax(axis=1)] = True
    return voted


def _check_vote_options(models: int, weights: Sequence[float] | None = None, min_votes: float | None = None) -> None:
    """Weights: one finite positive number per model (nan or a negative weight would silently turn every vote
    into nonsense); min_votes: finite, above 0 and reachable (at most the total weight)."""
    total = float(models)
    if weights is not None:
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != (models,) or not (np.isfinite(values) & (values > 0)).all():
            raise PipelineError(f"weights: expected {models} finite positive numbers, got {list(weights)}")
        total = float(values.sum())
    if min_votes is not None and not (np.isfinite(min_votes) and 0 < min_votes <= total):
        raise PipelineError(
            f"min_votes: must be a number in (0, {total:g}] (the total weight of {models} models), got {min_votes}"
        )


def _reference_vote(decisions: np.ndarray) -> np.ndarray:
    """The reference pipeline's hard vote over (models, N, 8) decisions, exactly: with up to 3 models each row
    takes the label(s) with the most votes, or joy alone when no model voted for anything; with more, the labels
    with at least n/2 votes, and a row where none reaches n/2 stays empty."""
    models = len(decisions)
    votes = decisions.sum(axis=0)
    if models > 3:
        return votes * 2 >= models
    most = votes.max(axis=1, keepdims=True)
    voted = (votes == most) & (most > 0)
    voted[most[:, 0] == 0, 0] = True  # joy: label 0
    return voted


@dataclass(frozen=True)
class DecisionRule:
    """How one or several models' probabilities become labels, validated once here and saved with a run
    (`OUT/decision.json`), so `inference.py --run OUT` decides exactly as the run's `submission.jsonl` did.

    `strategy`: `hard` (each model's decisions at `threshold`, then voted by `vote_rule`/`vote_tie`, or at least
    `min_votes`) or `soft` (the weighted mean probability at `threshold`). `threshold` is one number or 8 per-label
    values; `fallback` gives an empty row its top label (the reference vote rule has its own)."""

    strategy: str = DEFAULT_STRATEGY
    threshold: float | tuple[float, ...] = 0.5
    fallback: bool = True
    vote_rule: str = DEFAULT_VOTE_RULE
    vote_tie: str = DEFAULT_VOTE_TIE
    min_votes: float | None = None
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        values = np.atleast_1d(np.asarray(self.threshold, dtype=np.float64))
        if np.ndim(self.threshold) == 0 and not 0 < values[0] < 1:
            raise PipelineError(f"threshold: must be in (0, 1), got {self.threshold}")
        if values.shape not in ((1,), (8,)) or not ((values > 0) & (values < 1)).all():
            raise PipelineError(f"threshold: expected one number or 8 numbers in (0, 1), got {self.threshold}")
        # one number or a tuple, whatever was given (a numpy array, a list): the rule is hashable and saves as JSON
        object.__setattr__(
            self, "threshold", float(values[0]) if np.ndim(self.threshold) == 0 else tuple(map(float, values))
        )
        check_choice("vote_rule", self.vote_rule, VOTE_RULES)
        check_choice("vote_tie", self.vote_tie, VOTE_TIES)
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(map(float, self.weights)))
            _check_vote_options(len(self.weights), self.weights, self.min_votes)
            if (
                self.vote_rule == "reference"
                and self.min_votes is None
                and self.strategy == "hard"
                and not np.allclose(self.weights, 1.0)
            ):
                raise PipelineError("the reference vote rule counts every model once: it takes no weights")
        elif self.min_votes is not None and not (np.isfinite(self.min_votes) and self.min_votes > 0):
            # its upper bound, the total weight, is checked once the number of models is known (check_models)
            raise PipelineError(f"min_votes: must be a number in (0, the number of models], got {self.min_votes}")

    def check_models(self, models: int) -> None:
        """The rule's weights and min_votes must fit this many models."""
        _check_vote_options(models, self.weights, self.min_votes)

    def apply(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """The decisions for the models' (N, 8) probabilities (one model: its own decisions)."""
        self.check_models(len(probs))
        mean_probs = self.mean(probs)
        if self.strategy == "soft" or len(probs) == 1:
            return self.decide(mean_probs)
        return self.vote([self.decide(p) for p in probs], mean_probs)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """One model's (or the mean's) decisions: the threshold(s), then the empty-row fallback."""
        return decide(probs, np.asarray(self.threshold, dtype=np.float64), self.fallback)

    def vote(self, decisions: Sequence[np.ndarray], mean_probs: np.ndarray | None = None) -> np.ndarray:
        """The hard vote of the models' decisions (`mean_probs`, when known, breaks the fallback's ties)."""
        return hard_vote(decisions, self, mean_probs)

    def mean(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """The models' (weighted) mean probability: the soft vote's input and the hard vote's tie-break."""
        return np.average(np.stack(probs), axis=0, weights=self.weights)

    def as_dict(self) -> dict:
        """The rule as JSON-ready values (what decision.json holds)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    def save(self, path: str) -> None:
        write_json_atomic(path, self.as_dict())

    @classmethod
    def load(cls, path: str) -> DecisionRule:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{path}: cannot read the run's decision rule ({exc})") from None
        names = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise PipelineError(f"{path}: expected the keys {', '.join(names)}")
        problem = _rule_type_problem(data)
        if problem is not None:
            raise PipelineError(f"{path}: {problem}")
        tuples = {key: tuple(data[key]) for key in ("threshold", "weights") if isinstance(data[key], list)}
        try:
            return cls(**{**data, **tuples})
        except PipelineError as exc:
            raise PipelineError(f"{path}: {exc}") from None


def is_number(value) -> bool:
    """A JSON number (a boolean is not one, though Python counts it as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rule_type_problem(data: dict) -> str | None:
    """What is of the wrong JSON type in a saved rule ("false" as a string is true to Python, so types are checked
    before values), or None."""
    expected = {
        "strategy": (lambda v: isinstance(v, str), "a string"),
        "threshold": (
            lambda v: is_number(v) or (isinstance(v, list) and all(map(is_number, v))),
            "a number or a list of numbers",
        ),
        "fallback": (lambda v: isinstance(v, bool), "true or false (a JSON boolean)"),
        "vote_rule": (lambda v: isinstance(v, str), "a string"),
        "vote_tie": (lambda v: isinstance(v, str), "a string"),
        "min_votes": (lambda v: v is None or is_number(v), "null or a number"),
        "weights": (
            lambda v: v is None or (isinstance(v, list) and all(map(is_number, v))),
            "null or a list of numbers",
        ),
    }
    for key, (ok, description) in expected.items():
        if not ok(data[key]):
            return f"{key}: expected {description}, got {json.dumps(data[key])}"
    return None


@dataclass
class _VoteInput:
    """One model's predictions: a probability file (decisions derived by threshold) or a submission file."""

    path: str
    ids: list[str]
    decisions: np.ndarray
    probs: np.ndarray | None = None
    inputs: list[dict] | None = None


def _first_object(path: str) -> dict:
    for _, obj in iter_json_lines(path):
        if not isinstance(obj, dict):
            raise RowError(path, None, "row", "expected JSON objects")
        return obj
    raise RowError(path, None, "file", "no rows")


def _load_vote_input(path: str, rule: DecisionRule) -> _VoteInput:
    """A probability file (decided by `rule`'s thresholds) or a submission file (its decisions)."""
    if "probs" in _first_object(path):
        ids, probs = read_probs(path)
        return _VoteInput(path, ids, rule.decide(probs), probs=probs)
    rows = load_jsonl(path, "required")
    return _VoteInput(
        path, rows["id"], np.asarray(rows["labels"]) > 0.5, inputs=[json.loads(s) for s in rows["input_json"]]
    )


def align_by_id(inputs: Sequence[_VoteInput]) -> None:
    """Reorder every input to the first one's row order; they must hold the same set of ids."""
    order = inputs[0].ids
    for item in inputs[1:]:
        position = {row_id: i for i, row_id in enumerate(item.ids)}
        missing = next((row_id for row_id in order if row_id not in position), None)
        if missing is not None or len(item.ids) != len(order):
            extra = next((row_id for row_id in item.ids if row_id not in set(order)), None)
            what = (
                f"has no row for id {missing!r}"
                if missing is not None
                else f"has id {extra!r} that {inputs[0].path} lacks"
            )
            raise PipelineError(f"{item.path}: {what}")
        index = np.array([position[row_id] for row_id in order])
        item.ids = list(order)
        item.decisions = item.decisions[index]
        item.probs = None if item.probs is None else item.probs[index]
        item.inputs = None if item.inputs is None else [item.inputs[i] for i in index]


def _check_same_ids(inputs: Sequence[_VoteInput]) -> None:
    """Every input must list the same ids in the same order; name the first place they differ."""
    first = inputs[0]
    for other in inputs[1:]:
        for position, (a, b) in enumerate(zip(first.ids, other.ids)):
            if a != b:
                raise PipelineError(f"{other.path}: row {position + 1} has id {b!r} where {first.path} has {a!r}")
        if len(first.ids) != len(other.ids):
            raise PipelineError(f"{other.path}: {len(other.ids)} rows, but {first.path} has {len(first.ids)}")


def ensemble_files(
    paths: Sequence[str],
    output_path: str,
    rule: DecisionRule | None = None,
    *,
    reference_path: str | None = None,
    align: bool = False,
) -> np.ndarray:
    """Combine prediction files into one submission by `rule` (default: hard majority vote at 0.5 with the
    fallback). `reference_path` (the input jsonl) supplies each row's `input` when every file is a probability file;
    `align` reorders the inputs by id first (to the reference's order when there is one, else the first input's)."""
    rule = rule or DecisionRule()
    rule.check_models(len(paths))
    check_distinct_paths(
        {**{f"--inputs {path}": path for path in paths}, "--reference": reference_path}, {"--output": output_path}
    )
    check_output_path(output_path, "--output")
    inputs = [_load_vote_input(path, rule) for path in paths]
    reference = load_jsonl(reference_path, "optional") if reference_path is not None else None
    if align:
        anchor = (
            [_VoteInput(reference_path, reference["id"], np.zeros((len(reference), 0)))]
            if reference is not None
            else []
        )
        align_by_id([*anchor, *inputs])
    _check_same_ids(inputs)
    decisions = _combine(inputs, rule)
    row_inputs = next((item.inputs for item in inputs if item.inputs is not None), None)
    if reference is not None:
        _check_same_ids([_VoteInput(reference_path, reference["id"], np.empty(0)), inputs[0]])
        row_inputs = [json.loads(s) for s in reference["input_json"]]
    if row_inputs is None:
        raise PipelineError(
            "all inputs are probability files: give --reference INPUT.jsonl to copy each row's input from"
        )
    write_submission(output_path, inputs[0].ids, row_inputs, decisions)
    return decisions


def _combine(inputs: Sequence[_VoteInput], rule: DecisionRule) -> np.ndarray:
    """Files' decisions voted (hard), or their mean probability decided (soft, probability files only)."""
    probs = [item.probs for item in inputs if item.probs is not None]
    mean_probs = rule.mean(probs) if len(probs) == len(inputs) else None
    if rule.strategy == "hard":
        return rule.vote([item.decisions for item in inputs], mean_probs)
    if mean_probs is None:
        raise PipelineError(
            "soft voting needs probability files for every input (submission files hold no probabilities)"
        )
    return rule.decide(mean_probs)
