"""Hard voting of several models' decisions into one.

Rules (`rule`):
- `majority` (default): a label is on when more than half the models vote for it. With an even number of
  models a label with exactly half the votes is a tie, settled by `tie`: `positive` (on, the default, as the
  reference's `votes >= n/2`) or `negative` (off).
- `reference`: the reference pipeline's rule. Up to 3 models: per row, the label(s) with the most votes
  (all of them if several share the maximum); more than 3 models: labels with votes >= n/2.

A row left with no label (possible under `majority`) falls back, unless disabled, to the label(s) with the most
votes, and among those to the one with the highest mean probability when probabilities are known, else the
first in label order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

VoteRule = Literal["majority", "reference"]
TieRule = Literal["positive", "negative"]


def hard_vote(
    decisions: Sequence[np.ndarray],
    rule: VoteRule = "majority",
    tie: TieRule = "positive",
    fallback: bool = True,
    mean_probs: np.ndarray | None = None,
) -> np.ndarray:
    if not decisions:
        raise ValueError("hard voting needs at least one model")
    stacked = np.stack([np.asarray(d, dtype=bool) for d in decisions])
    num_models = stacked.shape[0]
    votes = stacked.sum(axis=0)
    if rule == "majority":
        voted = 2 * votes > num_models
        if tie == "positive":
            voted |= 2 * votes == num_models
        elif tie != "negative":
            raise ValueError(f"unknown tie rule {tie!r}; choose positive or negative")
    elif rule == "reference":
        if num_models <= 3:
            voted = (votes == votes.max(axis=1, keepdims=True)) & (votes > 0)
        else:
            voted = 2 * votes >= num_models
    else:
        raise ValueError(f"unknown vote rule {rule!r}; choose majority or reference")
    if fallback:
        empty = np.flatnonzero(~voted.any(axis=1))
        if len(empty):
            # most votes first; mean probability breaks ties among them; argmax takes the first label otherwise
            key = votes[empty].astype(np.float64)
            if mean_probs is not None:
                key += np.asarray(mean_probs, dtype=np.float64)[empty] * 0.5  # < 1 vote, so votes still dominate
            voted[empty, key.argmax(axis=1)] = True
    return voted
