"""The model card (`README.md`) written into every saved checkpoint folder: what the model is, what it was trained
on and with which settings, how well it did, how to call it, and what it is not for."""

from __future__ import annotations

import os

import yaml

from nikl_emotion.backends.heads import head_named
from nikl_emotion.base.checkpoint_files import MODEL_CARD_FILE
from nikl_emotion.base.fileio import write_text_atomic
from nikl_emotion.base.labels import LABELS
from nikl_emotion.base.vocabulary import DEFAULT_INPUT_TEMPLATE
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, TARGET_END, TARGET_START, fill_template

__all__ = [
    "model_card",
    "write_model_card",
]


# keys whose values say what the model is; the full resolved config follows them in the card
_CARD_KEYS = (
    "model_name_or_path",
    "classifier_head",
    "train_files",
    "num_folds",
    "loss",
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "weight_decay",
    "input_format",
    "max_seq_length",
    "remove_others",
    "cleanse",
)


def _scores_table(per_label: dict) -> list[str]:
    lines = ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label in LABELS:
        s = per_label[label]
        lines.append(f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |")
    return lines


def _input_example(input_format: str, template: str) -> str:
    if input_format == "instruction":
        filled = fill_template(template, "오늘 공연 너무 좋았다", "공연").replace("\n", "\\n")
        return f'classifier("{filled}")  # input_template filled in (see preprocessing.json)'
    if input_format == "pair":
        return (
            'classifier({"text": "오늘 공연 너무 좋았다", "text_pair": "공연"})  '
            "# (cleaned text, target form); a null target: the text alone"
        )
    if input_format == "text":
        return 'classifier("오늘 공연 너무 좋았다")  # the cleaned text alone (this model was not shown the target)'
    if input_format == "marker":
        return (
            f'classifier("오늘 {TARGET_START} 공연 {TARGET_END} 너무 좋았다")  '
            "# the target span wrapped in markers; a null target: the text alone"
        )
    prompt = PROMPT_TEMPLATE.format(target="공연")
    return f'classifier({{"text": "{prompt}", "text_pair": "오늘 공연 너무 좋았다"}})  # (prompt, text)'


def model_card(
    config: dict, fold: int, validation: dict, run: dict | None = None, thresholds: dict | None = None
) -> str:
    """Markdown with a Hugging Face metadata header. `validation` is the fold's score (metrics.score); `run` the
    run's OOF score and `thresholds` thresholds.json, once the whole K-fold run is summarised."""
    sections = (
        _header(config, fold),
        _training_section(config, fold),
        _scores_section(fold, validation, run, thresholds),
        _usage_section(config),
        _LIMITS,
        _config_section(config),
    )
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


def _header(config: dict, fold: int) -> list[str]:
    return [
        "---",
        "language: ko",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [emotion, multi-label, target-aware, nikl]",
        "---",
        "",
        f"# NIKL 2023 emotion analysis: fold {fold} of {config.get('num_folds', '?')}",
        "",
        f"Target-aware multi-label emotion classifier (8 Plutchik emotions: {', '.join(LABELS)}) fine-tuned from "
        f"`{config.get('model_name_or_path', '?')}` by the nikl-emotion pipeline (Hugging Face Trainer, "
        f"{config.get('loss', 'bce')} loss). Each label is an independent sigmoid; the pipeline predicts a label at "
        f"probability ≥ {config.get('threshold', 0.5)} and gives a row with none its top label.",
    ]


def _training_section(config: dict, fold: int) -> list[str]:
    lines = [
        "## Training data and settings",
        "",
        f"- data files: {', '.join(f'`{p}`' for p in config.get('train_files', [])) or '?'}; "
        "this checkpoint trained on "
        f"folds other than {fold} and was selected on fold {fold} (validation micro-F1).",
    ]
    return lines + [
        f"- {key}: `{config[key]}`"
        for key in _CARD_KEYS
        if key in config and key not in ("model_name_or_path", "train_files")
    ]


def _scores_section(fold: int, validation: dict, run: dict | None, thresholds: dict | None) -> list[str]:
    lines = [
        "## Scores",
        "",
        f"Validation (fold {fold}, {validation['num_rows']} rows): micro-F1 **{validation['micro_f1']:.4f}**, "
        f"macro-F1 {validation['macro_f1']:.4f}.",
        "",
        *_scores_table(validation["per_label"]),
    ]
    if run is not None:
        lines += [
            "",
            f"Out-of-fold over the whole training set ({run['num_rows']} rows, all folds): micro-F1 "
            f"**{run['micro_f1']:.4f}**, macro-F1 {run['macro_f1']:.4f}.",
        ]
    if thresholds is not None:
        per_label = ", ".join(f"{label} {value:.2f}" for label, value in thresholds["per_label"].items())
        lines += [
            "",
            f"Per-label thresholds fitted on the out-of-fold probabilities (`thresholds.json` of the run): "
            f"{per_label}; one global threshold: {thresholds['global']:.2f}.",
        ]
    return lines


def _usage_section(config: dict) -> list[str]:
    lines = [
        "## How to use",
        "",
        "With the nikl-emotion package, which cleans and encodes text exactly as in training (`preprocessing.json` in "
        "this folder):",
        "",
        "```python",
        "from nikl_emotion import EmotionClassifier",
        'classifier = EmotionClassifier.from_pretrained("PATH/TO/THIS/FOLDER")',
        'probs = classifier.predict_proba("test.jsonl")  # (rows, 8); also task rows as dicts, or plain texts',
        "```",
        "",
    ]
    usage = head_named(config.get("classifier_head", "cls")).usage()
    if usage is not None:  # a head of the package's own: transformers alone cannot load it
        return lines + usage
    if config.get("lora_r") and not config.get("merge_lora"):
        return lines + _adapter_usage(config)
    return lines + [
        "With transformers alone:",
        "",
        "```python",
        "from transformers import pipeline",
        'classifier = pipeline("text-classification", model="PATH/TO/THIS/FOLDER", top_k=None, '
        'function_to_apply="sigmoid")',
        _input_example(config.get("input_format", "pair"), config.get("input_template", DEFAULT_INPUT_TEMPLATE)),
        "```",
        "",
        "The pipeline's `inference.py` applies the same cleaning as training (remove `&others&` "
        f"{config.get('remove_others')}, symbol cleansing {config.get('cleanse')}) and encodes the target as "
        f"`{config.get('input_format', 'pair')}`; called through `pipeline()`, clean the text the same way first.",
    ]


def _adapter_usage(config: dict) -> list[str]:
    return [
        f"This folder holds a LoRA adapter (rank {config.get('lora_r')}) and the classification head over the base "
        f"model `{config.get('model_name_or_path', '?')}`, which must be at that path or on the hub: `pipeline()` "
        "does not load it plainly. `EmotionClassifier.from_pretrained` (nikl-emotion) loads the base as the run "
        "trained it (`loading.json`: its dtype, autocast and 4-bit settings), so it reproduces the run's "
        "probabilities. With peft alone:",
        "",
        "```python",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoConfig, AutoModelForSequenceClassification",
        'config = AutoConfig.from_pretrained("PATH/TO/THIS/FOLDER")  # the labels and the pad token id',
        "base = AutoModelForSequenceClassification.from_pretrained("
        f'"{config.get("model_name_or_path", "BASE")}", config=config,',
        "                                                          "
        "dtype=torch.float32)  # or loading.json's base_dtype",
        "base.score.float()  # the head trained in float32: its weights load unrounded",
        'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")  '
        "# merge_and_unload() only over float32 weights",
        "```",
        "",
        "Run it under `torch.autocast` in loading.json's `autocast` dtype if it names one. Train with "
        "`merge_lora: true` for a folder that loads like any model.",
    ]


_LIMITS = [
    "## Intended use and limits",
    "",
    "- Korean social-media style sentences with a target span, as in the NIKL 2023 emotion analysis task; scores "
    "above are on held-out rows of the same distribution and will be lower on other domains.",
    "- Rare labels (fear, disgust, surprise in NIKL) are predicted far less reliably than joy or anticipation; "
    "check the per-label table before relying on one label.",
    "- Multi-label: probabilities do not sum to 1. One fold's model; the run's fold vote is usually better.",
    "- Trained on data under the NIKL corpus licence: check its terms before redistributing this model.",
]


def _config_section(config: dict) -> list[str]:
    return [
        "## Full configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, allow_unicode=True, sort_keys=False).rstrip(),
        "```",
    ]


def write_model_card(
    folder: str, config: dict, fold: int, validation: dict, run: dict | None = None, thresholds: dict | None = None
) -> None:
    write_text_atomic(os.path.join(folder, MODEL_CARD_FILE), model_card(config, fold, validation, run, thresholds))
