"""Tiny, random-init local imitations of the hub encoders users bring, built at test time from the sample data.

Each folder reproduces its family's real format, the parts that decide whether the pipeline works with it: the
config class and the saved model class, the tokenizer class, which tokenizer files exist and the quirks of
`tokenizer_config.json` / `config.json`. Only the sizes are tiny and the weights random.

| family | saved model | tokenizer | quirks reproduced |
|---|---|---|---|
| kcelectra | ElectraForPreTraining | BertTokenizer from `vocab.txt` only | `do_lower_case: false` |
| klue-roberta | RobertaForMaskedLM | BertTokenizer (`tokenizer.json` + vocab) | `type_vocab_size: 1`; |
| | | | [CLS] [PAD] [SEP] [UNK] [MASK]; saved in fp16, as half-precision re-uploads and Korean fine-tunes are |
| kcbert | BertForMaskedLM | BertTokenizer from `vocab.txt`, no class | pooler weights saved; 300 positions |
| xlm-roberta | XLMRobertaForMaskedLM | XLMRobertaTokenizer (Unigram, Metaspace) | `type_vocab_size: 1`; <s> <pad> |
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    ElectraConfig,
    ElectraForPreTraining,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaTokenizer,
)
from transformers.models.bert.modeling_bert import BertPooler

from nikl_emotion.text.encoding import PROMPT_TEMPLATE

FAMILIES = ("kcelectra", "klue-roberta", "kcbert", "xlm-roberta")
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KLUE_SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
VOCAB_SIZE = 1500


def corpus() -> list[str]:
    """Raw texts and targets of the sample files, and the prompt's words: what a hub vocabulary would cover."""
    texts = [PROMPT_TEMPLATE.format(target="대상")]
    for path in (SAMPLE_TRAIN, SAMPLE_DEV, SAMPLE_TEST):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.append(row["input"]["form"])
            if row["input"]["target"]["form"]:
                texts.append(row["input"]["target"]["form"])
    return texts


def wordpiece_vocab(special_tokens: list[str]) -> list[str]:
    """A cased, Hangul-syllable WordPiece vocabulary (as KcBERT/KcELECTRA/klue ship), ids in the given order."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=special_tokens, show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.get)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _write_vocab(folder: Path, vocab: list[str]) -> None:
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


def build_kcelectra(folder: Path, do_lower_case: bool | None = False) -> Path:
    """beomi/KcELECTRA-base-v2022: the discriminator (ElectraForPreTraining), `vocab.txt` and a tokenizer_config.
    `do_lower_case=None` leaves the key out, as some re-uploads do (transformers then lowercases and NFD-splits)."""
    folder.mkdir(parents=True)
    vocab = wordpiece_vocab(BERT_SPECIALS)
    _write_vocab(folder, vocab)
    tokenizer_config = {"model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    if do_lower_case is not None:
        tokenizer_config["do_lower_case"] = do_lower_case
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    config = ElectraConfig(vocab_size=len(vocab), embedding_size=32, max_position_embeddings=512, **TINY)
    torch.manual_seed(0)
    ElectraForPreTraining(config).save_pretrained(folder)
    return folder


def build_klue_roberta(folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    """klue/roberta-base: RoBERTa weights with one segment embedding, read by a BERT WordPiece tokenizer whose
    special tokens come first as [CLS] [PAD] [SEP] [UNK] [MASK]; `tokenizer.json` beside `vocab.txt`."""
    folder.mkdir(parents=True)
    vocab = wordpiece_vocab(KLUE_SPECIALS)
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=False).save_pretrained(folder)
    _write_vocab(folder, vocab)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "do_lower_case": False,
            "do_basic_tokenize": True,
            "never_split": None,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "bos_token": "[CLS]",
            "eos_token": "[SEP]",
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_max_length": 512,
            "tokenizer_class": "BertTokenizer",
        },
    )
    config = RobertaConfig(
        vocab_size=len(vocab),
        max_position_embeddings=514,
        type_vocab_size=1,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        tokenizer_class="BertTokenizer",
        **TINY,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).to(dtype).save_pretrained(folder)
    return folder


def build_kcbert(folder: Path) -> Path:
    """beomi/kcbert-base: a BertForMaskedLM checkpoint that still carries the pretrained pooler (which
    BertForMaskedLM does not use but BertForSequenceClassification does), 300 positions, `vocab.txt` and a
    tokenizer_config without a tokenizer class."""
    folder.mkdir(parents=True)
    vocab = wordpiece_vocab(BERT_SPECIALS)
    _write_vocab(folder, vocab)
    _write_json(folder / "tokenizer_config.json", {"do_lower_case": False, "model_max_length": 300})
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=300, **TINY)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    pooler = BertPooler(config)
    torch.nn.init.normal_(pooler.dense.weight, std=0.02)
    state = model.state_dict()
    state.update({f"bert.pooler.{key}": value for key, value in pooler.state_dict().items()})
    model.save_pretrained(folder, state_dict=state)
    return folder


def build_xlm_roberta(folder: Path) -> Path:
    """xlm-roberta-style: a SentencePiece-like Unigram tokenizer (Metaspace) with <s> <pad> </s> <unk> first and
    <mask> last, and a RoBERTa encoder with one segment embedding."""
    folder.mkdir(parents=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    unigram.train_from_iterator(corpus(), trainer=trainer)
    pieces = json.loads(unigram.to_str())["model"]["vocab"]  # [[piece, score], ...], specials first
    vocab = [(piece, score) for piece, score in pieces] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    tokenizer.save_pretrained(folder)
    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        max_position_embeddings=514,
        type_vocab_size=1,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        **TINY,
    )
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(config).save_pretrained(folder)
    return folder


BUILDERS = {
    "kcelectra": build_kcelectra,
    "klue-roberta": build_klue_roberta,
    "kcbert": build_kcbert,
    "xlm-roberta": build_xlm_roberta,
}


def build_family(name: str, folder: Path) -> Path:
    return BUILDERS[name](folder)
