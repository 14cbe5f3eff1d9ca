"""Choosing how a run's fold probabilities become labels (`decision: auto`), on nested out-of-fold scores.

Candidates, in the order ties are settled (the run's fixed rule first, then fewer fitted values, then the rule that
uses fitted thresholds on the kind of probabilities they were fitted on before the one that does not):

- `hard` (or `reference` when `vote_rule: reference` is configured): the folds' decisions at `threshold`, voted;
  this is the rule `decision: fixed` always uses;
- `soft`: the folds' mean probability at `threshold`;
- `hard_tuned`: each fold's decisions at per-label thresholds fitted on the out-of-fold probabilities, voted; the
  thresholds were fitted on single models' probabilities and are applied to single models' probabilities;
- `soft_tuned`: the folds' mean probability at those thresholds; a mean of K models is less extreme than one
  model's probability, so thresholds fitted on the latter may sit in the wrong place for it (measured on NIKL dev:
  BENCHMARKS.md);
- `hard` besides `reference` when the reference rule is configured.

Each candidate is scored on the OOF rows, each fold's rows decided by the rule as fitted on the other folds only
(`thresholds.nested_thresholds`), and applied as to K folds that agree (K copies of the held-out model's
probabilities). The OOF rows carry one held-out model each, so the estimate measures the thresholds and a rule's
handling of empty rows; it cannot see how K different models vote or average: hard and soft twins tie there, and the
tie goes to the one listed first. A rule other than the fixed one is chosen only when its gain over the fixed rule
exceeds one standard error of that gain (paired bootstrap over the OOF rows): a gain of the size that resampling
the same rows produces is noise, and the fixed rule has nothing fitted that could overfit. The chosen rule is
refitted on all OOF rows and decides the test file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.vocabulary import DECISION_MODES, DEFAULT_STRATEGY, check_choice
from nikl_emotion.decisions.metrics import score
from nikl_emotion.decisions.thresholds import FittedThresholds
from nikl_emotion.decisions.voting import DecisionRule

__all__ = [
    "candidates",
    "gain_standard_error",
    "fixed_rule",
    "choose_rule",
    "describe_choice",
]


_BOOTSTRAP_RESAMPLES = 200


@dataclass(frozen=True)
class _Candidate:
    name: str
    description: str
    build: Callable[[float | tuple[float, ...]], DecisionRule]  # threshold(s) -> the rule
    tuned: bool  # its thresholds are fitted on OOF probabilities (else the configured threshold)


def candidates(threshold: float, fallback: bool, vote_rule: str, vote_tie: str) -> list[_Candidate]:
    """The candidate rules in tie-break order (module docstring); the first is the fixed rule."""

    def hard(rule: str) -> Callable[[float | tuple[float, ...]], DecisionRule]:
        return lambda t: DecisionRule("hard", t, fallback, rule, vote_tie)

    def soft(t: float | tuple[float, ...]) -> DecisionRule:
        return DecisionRule("soft", t, fallback)

    majority = _Candidate("hard", f"hard vote (majority) at {threshold}", hard("majority"), tuned=False)
    listed = (
        [_Candidate("reference", f"hard vote (reference rule) at {threshold}", hard("reference"), tuned=False)]
        if vote_rule == "reference"
        else [majority]
    )
    listed += [
        _Candidate("soft", f"soft vote (mean probability) at {threshold}", soft, tuned=False),
        _Candidate("hard_tuned", "hard vote (majority) at per-label OOF thresholds", hard("majority"), tuned=True),
        _Candidate("soft_tuned", "soft vote at per-label OOF thresholds", soft, tuned=True),
    ]
    return listed + ([majority] if vote_rule == "reference" else [])


def _nested_decisions(
    candidate: _Candidate, oof: np.ndarray, fold_of_row: np.ndarray, fitted: dict[int, np.ndarray], threshold: float
) -> np.ndarray:
    """The OOF rows decided by `candidate`, each fold's rows by the rule fitted on the other folds, applied as to
    K agreeing folds."""
    models = len(fitted)
    decisions = np.zeros(oof.shape, dtype=bool)
    for fold, fold_thresholds in fitted.items():
        rows = fold_of_row == fold
        rule = candidate.build(tuple(fold_thresholds) if candidate.tuned else threshold)
        decisions[rows] = rule.apply([oof[rows]] * models)
    return decisions


def _row_counts(gold: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """Per row: true positives, predicted labels, gold labels (micro-F1 = 2·Σtp / (Σpredicted + Σgold))."""
    return np.stack([(gold & decisions).sum(axis=1), decisions.sum(axis=1), gold.sum(axis=1)], axis=1).astype(
        np.float64
    )


def gain_standard_error(gold: np.ndarray, base: np.ndarray, other: np.ndarray, seed: int = 0) -> float:
    """Standard error of micro-F1(other) − micro-F1(base), the same rows resampled with replacement for both."""
    if np.array_equal(base, other):
        return 0.0
    rng = np.random.default_rng(seed)
    rows = len(gold)
    weights = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=_BOOTSTRAP_RESAMPLES)  # (resamples, rows)
    gains = []
    for decisions in (base, other):
        tp, predicted, golden = (weights @ _row_counts(gold, decisions)).T
        gains.append(2 * tp / np.maximum(predicted + golden, 1))
    return float(np.std(gains[1] - gains[0], ddof=1))


def fixed_rule(decision_args) -> DecisionRule:
    """The rule `decision: fixed` decides with, from a run's DecisionArguments: the folds' hard vote at `threshold` by
    `vote_rule`/`vote_tie`, with the empty-row fallback when `fallback_top_label`."""
    return DecisionRule(
        DEFAULT_STRATEGY,
        decision_args.threshold,
        decision_args.fallback_top_label,
        decision_args.vote_rule,
        decision_args.vote_tie,
    )


def choose_rule(
    oof: np.ndarray,
    gold: np.ndarray,
    fold_of_row: np.ndarray,
    thresholds: FittedThresholds,
    fixed: DecisionRule,
    mode: str = "auto",
) -> tuple[DecisionRule, dict]:
    """(the rule for the test file, the record for summary.json["decision"]). `fixed`: the rule `decision: fixed`
    uses (its threshold, fallback and vote options shape every candidate); `mode`: auto or fixed. `thresholds`: per
    fold, fitted on the other folds (`nested_thresholds`), and fitted on every OOF row, for the final rule."""
    check_choice("decision", mode, DECISION_MODES)
    gold = np.asarray(gold).astype(bool)
    threshold = fixed.threshold
    listed = candidates(threshold, fixed.fallback, fixed.vote_rule, fixed.vote_tie)
    records, rules, best = [], [], 0
    for index, candidate in enumerate(listed):
        decisions = _nested_decisions(candidate, oof, fold_of_row, thresholds.nested, threshold)
        scored = score(gold, decisions)
        if index == 0:  # the fixed rule: what every other candidate's gain is measured against
            fixed_decisions, fixed_micro_f1 = decisions, scored["micro_f1"]
        rules.append(candidate.build(tuple(map(float, thresholds.all_rows)) if candidate.tuned else threshold))
        gain = scored["micro_f1"] - fixed_micro_f1
        records.append(
            {
                "name": candidate.name,
                "description": candidate.description,
                "micro_f1": scored["micro_f1"],
                "macro_f1": scored["macro_f1"],
                "gain": gain,
                "gain_se": gain_standard_error(gold, fixed_decisions, decisions),
                "rule": rules[-1].as_dict(),
            }
        )
        clears_noise = gain > max(records[-1]["gain_se"], 1e-12)
        if clears_noise and scored["micro_f1"] > records[best]["micro_f1"] + 1e-12:  # a tie keeps the earlier rule
            best = index
    chosen = best if mode == "auto" else 0
    record = {
        "mode": mode,
        "chosen": records[chosen]["name"],
        "best_by_nested_oof": records[best]["name"],
        "gain_over_fixed": records[chosen]["gain"],
        "estimate": "nested out-of-fold micro-F1: each fold's rows decided by the rule fitted on the other folds; "
        "one held-out model per row, so hard and soft twins tie (the earlier one is chosen); another rule "
        "replaces the fixed one only when its gain exceeds one paired-bootstrap standard error (gain_se)",
        "candidates": records,
    }
    return rules[chosen], record


def describe_choice(record: dict) -> str:
    """One console line: the rule chosen and what it gains over the fixed rule on the nested OOF estimate."""
    by_name = {c["name"]: c for c in record["candidates"]}
    chosen, fixed = by_name[record["chosen"]], record["candidates"][0]
    if record["mode"] == "fixed":
        note = f"decision: fixed → {fixed['description']}"
        if record["best_by_nested_oof"] != fixed["name"]:
            best = by_name[record["best_by_nested_oof"]]
            note += (
                f" (nested OOF micro-F1 {fixed['micro_f1']:.4f}; decision: auto would choose {best['name']}, "
                f"{best['micro_f1']:.4f})"
            )
        return note
    return (
        f"decision: auto → {chosen['name']} ({chosen['description']}): nested OOF micro-F1 {chosen['micro_f1']:.4f}, "
        f"{record['gain_over_fixed']:+.4f} over {fixed['name']}"
    )
