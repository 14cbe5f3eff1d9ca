"""The files of a checkpoint folder (a fold's `best/`, a post-trained model, an export), named once: each backend
writes and reads its files by these names, and run folders, `--overwrite` and the folder-kind checks recognise them
from here."""

from __future__ import annotations

import re

__all__ = [
    "PREPROCESSING_FILE",
    "MODEL_CARD_FILE",
    "BACKBONE_SPEC_FILE",
    "NGRAM_MODEL_FILE",
    "NGRAM_INFO_FILE",
    "POST_TRAIN_FILE",
    "ONNX_FILE",
    "EXPORT_FILE",
    "EXPORT_FILES",
    "AVERAGING_STATE_FILE",
    "TOKENIZER_FILES",
    "TOKENIZER_STATE_FILE",
    "LOADING_FILE",
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "SAVED_MODEL_FILE",
]


PREPROCESSING_FILE = "preprocessing.json"  # the cleaning and encoding settings the model learned with (every backend)
MODEL_CARD_FILE = "README.md"  # the encoder's model card (model_card.py)
BACKBONE_SPEC_FILE = "backbone.json"  # what an offline backbone was built from
NGRAM_MODEL_FILE = "ngram.joblib"  # the n-gram member's fitted model
NGRAM_INFO_FILE = "ngram.json"  # what it is and its labels
POST_TRAIN_FILE = "post_train.json"  # written last by post_train.py: a post-trained model folder is complete with it
ONNX_FILE = "model.onnx"  # an export folder: this graph, export.json, the tokenizer, config.json, preprocessing.json
EXPORT_FILE = "export.json"
EXPORT_FILES = (ONNX_FILE, EXPORT_FILE)
AVERAGING_STATE_FILE = "weight_averaging.pt"  # inside a Trainer checkpoint: the EMA/SWA state (averaging.py)
# the files a tokenizer is read from: without one, a folder still "loads" a tokenizer of special tokens only
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.json",
)
# every file a tokenizer's behaviour is read from (its vocabulary, settings, special and added tokens, own code)
TOKENIZER_STATE_FILE = re.compile(
    r"tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt"
    r"|sentencepiece\.bpe\.model|spiece\.model|tokenizer\.model|tokenization_\w+\.py"
)
LOADING_FILE = (
    "loading.json"  # how a best/ was loaded and ran: base dtype, autocast, 4-bit, loading keys (precision.py)
)
ADAPTER_CONFIG_FILE = "adapter_config.json"  # a LoRA best/: names the base model (decoder_backend.py)
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # beside it: the adapter's and the head's weights
# what `save_pretrained` of a model and a tokenizer writes, and the settings saved beside them
SAVED_MODEL_FILE = re.compile(
    rf"config\.json|generation_config\.json|{re.escape(PREPROCESSING_FILE)}|{re.escape(LOADING_FILE)}|{re.escape(BACKBONE_SPEC_FILE)}"
    r"|(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?"
    r"|tokenizer(_config)?\.json|special_tokens_map\.json|added_tokens\.json|vocab\.(txt|json)|merges\.txt"
    r"|sentencepiece\.bpe\.model|spiece\.model|tokenizer\.model|chat_template\.(jinja|json)"
    r"|adapter_config\.json|adapter_model\.(safetensors|bin)"  # a LoRA adapter (decoder_backend.py)
    r"|(configuration|modeling|tokenization)_\w+\.py"  # a custom-code model's own code (trust_remote_code)
)
