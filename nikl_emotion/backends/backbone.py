"""Backbones: any `AutoModelForSequenceClassification` checkpoint, or one built offline from the task text.

`model_name_or_path` is a hub name, a local checkpoint folder, or `offline:<arch>-<size>` (e.g.
`offline:bert-tiny`, `offline:electra-small`): a WordPiece tokenizer trained on the training texts and a
randomly initialised small BERT/ELECTRA, saved with `save_pretrained` so everything downstream loads it like any
hub model. It exists so the whole pipeline runs with no internet; its scores are not a pretrained encoder's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import yaml
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    ElectraConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from nikl_emotion.backends.heads import build_classifier
from nikl_emotion.base.checkpoint_files import POST_TRAIN_FILE
from nikl_emotion.base.config import ModelArguments, ModelLoading
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.labels import ID2LABEL, LABEL2ID, NUM_LABELS
from nikl_emotion.base.vocabulary import OFFLINE_ARCHS, OFFLINE_PREFIX, is_offline
from nikl_emotion.folders.run_folder import CONFIG_FILE
from nikl_emotion.text.encoding import MARKER_TOKENS, add_marker_tokens, hangul_fix, model_input_names, splits_hangul

__all__ = [
    "backbone_loading",
    "check_model_folder",
    "parse_offline_spec",
    "train_wordpiece_tokenizer",
    "offline_config",
    "build_offline_backbone",
    "classification_config_kwargs",
    "load_tokenizer",
    "model_config",
    "raw_config",
    "needs_remote_code",
    "check_model_loading",
    "attention_kernel_available",
    "check_max_seq_length",
    "load_model",
    "fit_embeddings",
]


logger = logging.getLogger(__name__)

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDPIECE = {"unk_token": "[UNK]", "max_input_chars_per_word": 100}  # the offline tokenizer's model, as trained
_OFFLINE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
    "mini": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
}


def _is_post_training_folder(path: str) -> bool:
    """Whether `path` is (or was started as) a post_train.py output folder: its resolved config has MLM keys."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return False
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and "mlm_probability" in config


def check_model_folder(path: str) -> None:
    """A local `model_name_or_path` must be a finished model folder. A post-training run stopped before its end
    (no `post_train.json`, written last) holds checkpoints and a tokenizer but no usable model, and would fail
    later with an unrelated loading error. Hub names (no such folder) pass."""
    if not os.path.isdir(path):
        return
    if _is_post_training_folder(path) and not os.path.isfile(os.path.join(path, POST_TRAIN_FILE)):
        raise PipelineError(
            f"model_name_or_path: {path} is an unfinished post-training run (no {POST_TRAIN_FILE}, which is written "
            "last): run post_train.py with its config again to finish it (it resumes), then fine-tune from it"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        hint = (
            " (a train.py run folder? its checkpoints are OUT/fold_K/best)"
            if os.path.isfile(os.path.join(path, CONFIG_FILE))
            else ""
        )
        raise PipelineError(f"model_name_or_path: {path} has no config.json: not a Hugging Face model folder{hint}")


def parse_offline_spec(model_name_or_path: str) -> tuple[str, str]:
    """`offline:bert-tiny` -> ("bert", "tiny"); a clear error for anything else."""
    spec = model_name_or_path[len(OFFLINE_PREFIX) :]
    arch, _, size = spec.partition("-")
    if arch not in OFFLINE_ARCHS or size not in _OFFLINE_SIZES:
        choices = ", ".join(f"{OFFLINE_PREFIX}{a}-{s}" for a in OFFLINE_ARCHS for s in _OFFLINE_SIZES)
        raise ValueError(f"unknown offline backbone {model_name_or_path!r}; choose one of {choices}")
    return arch, size


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on `texts`, safe for Hangul.

    No lower-casing and no accent stripping: both go through NFD, which splits Hangul syllables into jamo.
    """
    tokenizer = Tokenizer(models.WordPiece(**_WORDPIECE))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
            ),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=_SPECIAL_TOKENS + list(MARKER_TOKENS),
        show_progress=False,
    )
    texts = list(texts)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    pieces = set(tokenizer.get_vocab(with_added_tokens=False)) | _alphabet_pieces(tokenizer, texts)
    tokenizer.model = _numbered_wordpiece(pieces)
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


def _alphabet_pieces(tokenizer: Tokenizer, texts: list[str]) -> set[str]:
    """Every character of `texts`, alone and as a word piece (`##c`): WordPiece turns a whole word into [UNK] when one
    of its characters has no piece, and the trainer leaves out rare characters' pieces."""
    characters = {char for text in texts for char in tokenizer.normalizer.normalize_str(text) if not char.isspace()}
    return {piece for char in characters for piece in (char, f"##{char}")}


def _numbered_wordpiece(pieces: set[str]) -> models.WordPiece:
    """The WordPiece model of `pieces`, numbered by the vocabulary alone: the special tokens first, in the order the
    trainer was given them (the ids it gave them), then every other piece in sorted order. The trainer numbers pieces
    in its hash map's order, which differs from one process to the next (huggingface/tokenizers#1794): the same text
    got other ids, and the same seed another model. WordPiece encodes by the pieces, not their ids."""
    special = _SPECIAL_TOKENS + list(MARKER_TOKENS)
    numbered = special + sorted(pieces - set(special))
    return models.WordPiece(vocab={piece: i for i, piece in enumerate(numbered)}, **_WORDPIECE)


def offline_config(model_name_or_path: str, tokenizer: PreTrainedTokenizerBase):
    """The BERT/ELECTRA config of an offline backbone (`offline:electra-tiny`, ...) sized for `tokenizer`."""
    arch, size = parse_offline_spec(model_name_or_path)
    config_cls = BertConfig if arch == "bert" else ElectraConfig
    dims = dict(_OFFLINE_SIZES[size])
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


def load_tokenizer(
    model_name_or_path: str, with_markers: bool = False, fix_hangul: bool = True, loading: ModelLoading = ModelLoading()
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, fitted to its model (the config beside it) and to Korean text: no segment ids for
    a model without an embedding for them, and (`fix_hangul`, for a backbone about
    to be trained) Hangul kept as syllables where the vocabulary spells it so (see `_tokenizer_settings`). The
    settings are load-time arguments, so `save_pretrained` writes them into every checkpoint and `pipeline()` loads
    the same tokenizer. A fine-tuned checkpoint is loaded with `fix_hangul=False`: it must see text as it was
    trained on it. `loading`: the model-loading keys (revision, trust_remote_code)."""
    hub = loading.hub_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **hub)
    settings = _tokenizer_settings(tokenizer, model_config(model_name_or_path, loading), fix_hangul)
    if settings:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **hub, **settings)
        _log_settings(model_name_or_path, settings, tokenizer)
    if with_markers:
        add_marker_tokens(tokenizer)
    return tokenizer


def model_config(model_name_or_path: str, loading: ModelLoading = ModelLoading()) -> PretrainedConfig | None:
    """The model config beside a tokenizer; None for a folder that holds a tokenizer only (an offline
    post-training run saves its tokenizer first and its model at the end), or a custom-code config without
    `trust_remote_code`."""
    try:
        return AutoConfig.from_pretrained(model_name_or_path, **loading.hub_kwargs())
    except (OSError, ValueError):
        return None


def raw_config(model_name_or_path: str, revision: str | None = None) -> dict:
    """config.json as a plain mapping, read without running any code it names ({} where there is none)."""
    try:
        config, _ = PretrainedConfig.get_config_dict(model_name_or_path, **({"revision": revision} if revision else {}))
        return config
    except (OSError, ValueError):
        return {}


def needs_remote_code(model_name_or_path: str, loading: ModelLoading) -> bool:
    """A checkpoint whose config names modelling code it ships (`auto_map`) and a model type transformers lacks."""
    config = raw_config(model_name_or_path, loading.revision)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return bool(config.get("auto_map")) and config.get("model_type") not in CONFIG_MAPPING


def check_model_loading(model_name_or_path: str, loading: ModelLoading) -> None:
    """The model-loading keys checked before any work: custom code asked for where the checkpoint ships it, and an
    attention kernel this machine has."""
    if not loading.trust_remote_code and needs_remote_code(model_name_or_path, loading):
        raise PipelineError(
            f"trust_remote_code: {model_name_or_path} ships its own modelling code (config.json's "
            "auto_map); set trust_remote_code: true if you trust that code"
        )
    kernel = loading.attn_implementation
    if kernel is not None and not attention_kernel_available(kernel):
        needs = _KERNEL_NEEDS.get(kernel, "pip install kernels")
        raise PipelineError(f"attn_implementation: {kernel} is not available here ({needs}); use sdpa or eager")


_KERNEL_NEEDS = {
    "flash_attention_2": "a CUDA GPU and pip install flash-attn",
    "flash_attention_3": "a Hopper GPU and flash-attn 3",
    "flex_attention": "torch with flex attention",
}


def attention_kernel_available(kernel: str) -> bool:
    from transformers.utils import import_utils

    checks = {
        "eager": lambda: True,
        "sdpa": lambda: True,
        "flash_attention_2": lambda: _torch_cuda() and import_utils.is_flash_attn_2_available(),
        "flash_attention_3": lambda: _torch_cuda() and import_utils.is_flash_attn_3_available(),
        "flex_attention": import_utils.is_torch_flex_attn_available,
    }
    if kernel in checks:
        return bool(checks[kernel]())
    return import_utils.is_kernels_available()  # a hub kernel (kernels-community/...) through the kernels package


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tokenizer_settings(
    tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig | None, fix_hangul: bool = True
) -> dict:
    """Load-time tokenizer arguments that make `tokenizer` fit its model and Korean text ({} for most)."""
    settings: dict = dict(hangul_fix(tokenizer)) if fix_hangul else {}
    names = None if config is None else model_input_names(tokenizer, config)
    if names is not None:
        settings["model_input_names"] = names
    if _lacks_pad_token(tokenizer, config) and tokenizer.eos_token is not None:  # a decoder's: batches must pad
        settings["pad_token"] = tokenizer.eos_token
    return settings


def _lacks_pad_token(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig | None) -> bool:
    """No pad token (Llama), or one the model has no embedding for (GPT-NeoX's tokenizer class adds <|padding|>
    when its files name none): either way the end-of-sequence token should pad."""
    if tokenizer.pad_token is None:
        return True
    vocab_size = getattr(config, "vocab_size", None)
    return bool(vocab_size) and tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= vocab_size


# models whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 positions unusable
_POSITION_OFFSET_MODEL_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text"})


def _max_model_tokens(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest encoding the model can embed (KcBERT: 300, klue/roberta and XLM-R: 512), from its position
    embeddings and the tokenizer's `model_max_length` where that is a real limit; None when neither says."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = (config.pad_token_id or 0) + 1 if config.model_type in _POSITION_OFFSET_MODEL_TYPES else 0
        limits.append(positions - offset)
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:  # unset: a huge sentinel
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


def check_max_seq_length(
    max_seq_length: int,
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    loading: ModelLoading = ModelLoading(),
) -> None:
    """Refuse a `max_seq_length` beyond the model's positions before training (it would crash in the first long
    batch)."""
    config = AutoConfig.from_pretrained(model_name_or_path, **loading.hub_kwargs())
    limit = _max_model_tokens(config, tokenizer)
    if limit is not None and max_seq_length > limit:
        raise PipelineError(
            f"max_seq_length: {max_seq_length} is more than the {limit} tokens {model_name_or_path} "
            f"can embed; set max_seq_length to {limit} or less"
        )


_LOGGED: set[tuple[str, str]] = set()


def _log_settings(model_name_or_path: str, settings: dict, tokenizer: PreTrainedTokenizerBase) -> None:
    """Say once per process what was changed (a K-fold run loads the same tokenizer once per fold)."""
    messages = []
    if "model_input_names" in settings:
        messages.append(
            (
                "info",
                f"{model_name_or_path}: the model has one token type embedding; token_type_ids are "
                "not passed to it (the tokenizer would mark the second segment with 1)",
            )
        )
    if "pad_token" in settings:
        messages.append(
            (
                "info",
                f"{model_name_or_path}: the tokenizer has no pad token; its end-of-sequence token "
                f"{settings['pad_token']} pads (the classifier reads the last token that is not padding)",
            )
        )
    fix = {key: value for key, value in settings.items() if key not in ("model_input_names", "pad_token")}
    if fix and splits_hangul(tokenizer):
        messages.append(
            (
                "warning",
                f"{model_name_or_path}: its tokenizer splits Hangul syllables into jamo (NFD) and "
                f"loading it with {fix} did not stop that; expect many unknown tokens",
            )
        )
    elif fix:
        messages.append(
            (
                "warning",
                f"{model_name_or_path}: its tokenizer_config leaves lower-casing/accent stripping "
                "on, which splits Hangul syllables into jamo (NFD) that its vocabulary does not "
                f"hold, so nearly every Korean word would be unknown; loaded with {fix} instead "
                "(saved with every checkpoint)",
            )
        )
    for level, message in messages:
        if (model_name_or_path, message) not in _LOGGED:
            _LOGGED.add((model_name_or_path, message))
            getattr(logger, level)(message)


def load_model(
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    head: str = "cls",
    loading: ModelLoading = ModelLoading(),
) -> PreTrainedModel:
    """Load a classifier with the task's 8 labels under `head` (heads.py) to fine-tune: every weight in float32
    whatever the checkpoint was saved in (precision.py); grows the embeddings if the tokenizer gained marker
    tokens."""
    import torch

    config = AutoConfig.from_pretrained(model_name_or_path, **loading.hub_kwargs(), **classification_config_kwargs())
    model = build_classifier(model_name_or_path, config, head, dtype=torch.float32, **loading.model_kwargs())
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
    return model


def fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the input embeddings to a tokenizer that gained tokens (the target markers, a pad token)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def backbone_loading(model_args: ModelArguments) -> ModelLoading:
    """The model-loading keys for the run's backbone: the settings' for a hub name or folder; none for an offline
    backbone, which this run built."""
    return ModelLoading() if is_offline(model_args.model_name_or_path) else model_args.loading
