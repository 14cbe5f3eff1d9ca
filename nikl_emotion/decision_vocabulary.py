"""The decision vocabulary, defined once: the names of the ways probabilities become labels. Argparse `choices`,
the configuration's validation and help text, `DecisionRule` and `decision: auto` all read them from here; this
module imports nothing of the pipeline, so the settings can read it without loading a model."""

from __future__ import annotations

from nikl_emotion.errors import PipelineError

STRATEGIES = ("hard", "soft")  # several models: vote their decisions, or decide their mean probability
VOTE_RULES = ("majority", "reference")  # the hard vote: more than half the models, or the reference pipeline's rule
VOTE_TIES = ("positive", "negative")  # majority with exactly half the votes
DECISION_MODES = ("auto", "fixed")  # a run's submission: the rule chosen on nested OOF scores, or the fixed rule
STACK_STRATEGY = "stack"  # ensemble.py --runs: a stacker over finished runs (not a way to combine probabilities)

DEFAULT_STRATEGY, DEFAULT_VOTE_RULE, DEFAULT_VOTE_TIE, DEFAULT_DECISION_MODE = "hard", "majority", "positive", "auto"


def spelled(choices: tuple[str, ...]) -> str:
    """`a or b`, `a, b or c`: the choices as help text and messages name them."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def check_choice(key: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PipelineError(f"{key}: {value!r} is not {spelled(choices)}")
