"""A logistic regression per label (scikit-learn), shared by the n-gram member (on sparse TF-IDF features) and the
stacker (on the members' logits)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "fit_label",
    "label_probability",
]


def fit_label(features, positive: np.ndarray, c: float, seed: int = 0, solver: str = "liblinear"):
    """A logistic regression for one label, or the label's constant rate when the rows hold one class only (a
    regression cannot be fitted on one class). liblinear suits the n-gram member's sparse features; lbfgs (which
    leaves the intercept unpenalised) the stacker's few dense ones."""
    from sklearn.linear_model import LogisticRegression

    if positive.all() or not positive.any():
        return float(positive.mean())
    return LogisticRegression(C=c, solver=solver, max_iter=1000, random_state=seed).fit(features, positive)


def label_probability(model, features) -> np.ndarray:
    """`fit_label`'s model applied to `features`: the positive class's probability per row."""
    return np.full(features.shape[0], model) if isinstance(model, float) else model.predict_proba(features)[:, 1]
