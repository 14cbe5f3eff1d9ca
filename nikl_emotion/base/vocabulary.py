"""The names the settings take, defined once: the ways probabilities become labels (the decision vocabulary), the
backends a `model_name_or_path` can name, the losses, the text's input formats and pre-tokenizers, the adversarial
methods. Argparse `choices`, the configuration's validation and help text, and the modules that implement each name
read them from here; this module imports nothing of the pipeline but its errors, so the settings (config.py) can
read it without loading a model."""

from __future__ import annotations

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "STRATEGIES",
    "VOTE_RULES",
    "VOTE_TIES",
    "DECISION_MODES",
    "STACK_STRATEGY",
    "OFFLINE_PREFIX",
    "OFFLINE_ARCHS",
    "NGRAM_PREFIX",
    "NGRAM_FEATURES",
    "INPUT_FORMATS",
    "DEFAULT_INPUT_TEMPLATE",
    "NO_TARGET",
    "PRETOKENIZERS",
    "ADVERSARIAL_METHODS",
    "MODEL_DTYPES",
    "INFERENCE_DTYPES",
    "ATTN_IMPLEMENTATIONS",
    "MAX_UNKNOWN_RATE",
    "CHOOSING_ROWS",
    "choosing_rows_name",
    "is_offline",
    "is_ngram",
    "spelled",
    "check_choice",
]


STRATEGIES = ("hard", "soft")  # several models: vote their decisions, or decide their mean probability
VOTE_RULES = ("majority", "reference")  # the hard vote: more than half the models, or the reference pipeline's rule
VOTE_TIES = ("positive", "negative")  # majority with exactly half the votes
DECISION_MODES = ("auto", "fixed")  # a run's submission: the rule chosen on nested OOF scores, or the fixed rule
STACK_STRATEGY = "stack"  # ensemble.py --runs: a stacker over finished runs (not a way to combine probabilities)

DEFAULT_STRATEGY, DEFAULT_VOTE_RULE, DEFAULT_VOTE_TIE, DEFAULT_DECISION_MODE = "hard", "majority", "positive", "auto"

# backends a model_name_or_path names besides a hub model or a local folder (backbone.py, ngram.py implement them)
OFFLINE_PREFIX = "offline:"  # offline:<arch>-<size>: an encoder with a tokenizer trained here on the task's text
OFFLINE_ARCHS = ("bert", "electra")
NGRAM_PREFIX = "ngram:"  # ngram:<features>: the features (TF-IDF) and a logistic regression per label, no encoder
NGRAM_FEATURES = ("tfidf", "context")  # backends/ngram.py: two views of a row

INPUT_FORMATS = ("pair", "marker", "prompt", "text", "instruction")  # encoding.py: how the target is shown to the model
# `instruction`: one string from `input_template` (a decoder reads it, then the label comes from its last token)
DEFAULT_INPUT_TEMPLATE = "문장: {text}\n대상: {target}\n위 문장에서 대상에 대해 드러난 감정은?"
NO_TARGET = "문장 전체"  # what the template names as the target of a row without one ("the whole sentence")
PRETOKENIZERS = ("none", "kiwi")  # morphemes.py: morpheme segmentation before an offline tokenizer
ADVERSARIAL_METHODS = ("none", "fgm", "awp")  # techniques.py
# how a checkpoint's weights are loaded (precision.py): `auto` is the pipeline's precision rule; the others name the
# dtype of a frozen base (LoRA); inference's --dtype says how a saved checkpoint runs (`auto`: as it was trained)
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
INFERENCE_DTYPES = ("auto", "fp32", "bf16", "fp16")
# transformers' attention kernels (a hub kernel such as kernels-community/flash-attn also passes, by its slash)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
MAX_UNKNOWN_RATE = 0.05  # a Korean encoder's own tokenizer leaves well under 1% of NIKL tokens unknown
# which rows of a fold chose its epoch (metrics.json "epoch_chosen_on") or scored a search's trials: its validation
# rows (its out-of-fold rows then saw the choice) or rows held out of its training rows by early_stopping_split
CHOOSING_ROWS = {
    "validation_rows": "fold's validation rows",
    "early_stopping_split": "early_stopping_split rows held out of the fold's training rows",
}


def is_offline(model_name_or_path: str) -> bool:
    return model_name_or_path.startswith(OFFLINE_PREFIX)


def is_ngram(model_name_or_path: str) -> bool:
    return model_name_or_path.startswith(NGRAM_PREFIX)


def spelled(choices: tuple[str, ...]) -> str:
    """`a or b`, `a, b or c`: the choices as help text and messages name them."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def check_choice(key: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PipelineError(f"{key}: {value!r} is not {spelled(choices)}")


def choosing_rows_name(held_out: bool) -> str:
    """The `CHOOSING_ROWS` name of a fold's choosing rows: held out of its training rows, or its validation rows."""
    return "early_stopping_split" if held_out else "validation_rows"
