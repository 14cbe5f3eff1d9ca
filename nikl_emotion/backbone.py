"""Backbones: any `AutoModelForSequenceClassification` checkpoint, or one built offline from the task text.

`model_name_or_path` is a hub name, a local checkpoint folder, or `offline:<arch>-<size>` (e.g.
`offline:bert-tiny`, `offline:electra-small`): a WordPiece tokenizer trained on the training texts and a
randomly initialised small BERT/ELECTRA, saved with `save_pretrained` so everything downstream loads it like any
hub model. It exists so the whole pipeline runs with no internet; its scores are not a pretrained encoder's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    ElectraConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from nikl_emotion.encoding import MARKER_TOKENS, add_marker_tokens
from nikl_emotion.labels import ID2LABEL, LABEL2ID, NUM_LABELS

OFFLINE_PREFIX = "offline:"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
OFFLINE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
    "mini": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
}
OFFLINE_ARCHS = ("bert", "electra")


def is_offline(model_name_or_path: str) -> bool:
    return model_name_or_path.startswith(OFFLINE_PREFIX)


def parse_offline_spec(model_name_or_path: str) -> tuple[str, str]:
    """`offline:bert-tiny` -> ("bert", "tiny"); a clear error for anything else."""
    spec = model_name_or_path[len(OFFLINE_PREFIX) :]
    arch, _, size = spec.partition("-")
    if arch not in OFFLINE_ARCHS or size not in OFFLINE_SIZES:
        choices = ", ".join(f"{OFFLINE_PREFIX}{a}-{s}" for a in OFFLINE_ARCHS for s in OFFLINE_SIZES)
        raise ValueError(f"unknown offline backbone {model_name_or_path!r}; choose one of {choices}")
    return arch, size


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 8000, max_length: int = 512) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on `texts`, safe for Hangul.

    No lower-casing and no accent stripping: both go through NFD, which splits Hangul syllables into jamo.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS + list(MARKER_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        additional_special_tokens=list(MARKER_TOKENS),
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def offline_config(model_name_or_path: str, tokenizer: PreTrainedTokenizerBase):
    """The BERT/ELECTRA config of an offline backbone (`offline:electra-tiny`, ...) sized for `tokenizer`."""
    arch, size = parse_offline_spec(model_name_or_path)
    config_cls = BertConfig if arch == "bert" else ElectraConfig
    dims = dict(OFFLINE_SIZES[size])
    if arch == "electra":
        dims["embedding_size"] = dims["hidden_size"]
    return config_cls(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
        **classification_config_kwargs(),
    )


def build_offline_backbone(
    texts: Iterable[str], output_dir: str, model_name_or_path: str, vocab_size: int = 8000, seed: int = 42
) -> str:
    """Train the tokenizer, create the small encoder, save both to `output_dir`; returns `output_dir`."""
    import torch  # deferred: only needed here and at model load

    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
    config = offline_config(model_name_or_path, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def classification_config_kwargs() -> dict:
    return {
        "num_labels": NUM_LABELS,
        "id2label": dict(ID2LABEL),
        "label2id": dict(LABEL2ID),
        "problem_type": "multi_label_classification",
    }


def load_tokenizer(model_name_or_path: str, with_markers: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if with_markers:
        add_marker_tokens(tokenizer)
    return tokenizer


def load_model(model_name_or_path: str, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """Load a classifier with the task's 8 labels; grows the embeddings if the tokenizer gained marker tokens."""
    config = AutoConfig.from_pretrained(model_name_or_path, **classification_config_kwargs())
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, config=config)
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model
