"""Tiny, random-init local imitations of the decoder LLMs users bring (polyglot-ko, Llama-family, Qwen2, Gemma),
built at test time with a byte-level BPE tokenizer trained on the sample data.

Each folder reproduces what decides whether the pipeline works with the family: the config class and the saved
causal-LM class, the tokenizer class and its special tokens (which have a pad token, which add a begin token), and
the dtype the hub ships it in (`SHIPPED_DTYPES`; `build_decoder(..., dtype=torch.float32)` saves a float32 copy).
Only the sizes are tiny and the weights random.

| family     | saved model        | dtype | tokenizer class          | specials                                  |
|------------|--------------------|-------|--------------------------|-------------------------------------------|
| polyglot   | GPTNeoXForCausalLM | fp16  | GPTNeoXTokenizer         | <|endoftext|> as bos/eos, no pad token      |
| llama      | LlamaForCausalLM   | bf16  | PreTrainedTokenizerFast  | <|begin_of_text|> added first, no pad token|
| qwen2      | Qwen2ForCausalLM   | bf16  | Qwen2Tokenizer           | pad = eos = <|endoftext|>, no begin token  |
| gemma      | GemmaForCausalLM   | bf16  | PreTrainedTokenizerFast  | <pad> 0, <eos> 1, <bos> 2 (added first)   |
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hub_families import corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from nikl_emotion.base.vocabulary import DEFAULT_INPUT_TEMPLATE

DECODER_FAMILIES = ("polyglot", "llama", "qwen2", "gemma")
# as the hub ships them: Llama 3, Qwen2 and Gemma in bf16; polyglot-ko (and its fine-tuned derivatives) in fp16
SHIPPED_DTYPES = {"polyglot": torch.float16, "llama": torch.bfloat16, "qwen2": torch.bfloat16, "gemma": torch.bfloat16}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VOCAB_SIZE = 1200


def byte_level_bpe(specials: list[str], begin: str | None) -> Tokenizer:
    """A GPT-2-style byte-level BPE trained on the sample texts and the instruction's words; `begin` is added before
    every encoding (Llama, Gemma)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([*corpus(), DEFAULT_INPUT_TEMPLATE], trainer=trainer)
    if begin is None:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    else:
        begin_id = tokenizer.token_to_id(begin)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{begin} $A", pair=f"{begin} $A $B:1", special_tokens=[(begin, begin_id)]
        )
    return tokenizer


def save_tokenizer(folder: Path, tokenizer: Tokenizer, tokenizer_class: str, **special) -> int:
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, **special)
    fast.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(
        json.dumps({**config, "tokenizer_class": tokenizer_class}, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return len(fast)


def ids(tokenizer: Tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.token_to_id(token) for token in tokens]


def build_polyglot(folder: Path) -> Path:
    """EleutherAI/polyglot-ko: GPT-NeoX, <|endoftext|> begins and ends, no pad token."""
    tokenizer = byte_level_bpe(["<|endoftext|>"], None)
    size = save_tokenizer(folder, tokenizer, "GPTNeoXTokenizer", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    (eos,) = ids(tokenizer, "<|endoftext|>")
    config = GPTNeoXConfig(vocab_size=size, max_position_embeddings=512, bos_token_id=eos, eos_token_id=eos, **TINY)
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).to(SHIPPED_DTYPES["polyglot"]).save_pretrained(folder)
    return folder


def build_llama(folder: Path, dims: dict | None = None) -> Path:
    """A Llama-3-style checkpoint: <|begin_of_text|> added first, <|end_of_text|>, no pad token (`dims`: other sizes
    than TINY, for bench/lora_vs_full.py)."""
    tokenizer = byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>")
    size = save_tokenizer(
        folder, tokenizer, "PreTrainedTokenizerFast", bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )
    bos, eos = ids(tokenizer, "<|begin_of_text|>", "<|end_of_text|>")
    sizes = {"num_key_value_heads": 1, **TINY, **(dims or {})}
    config = LlamaConfig(vocab_size=size, max_position_embeddings=512, bos_token_id=bos, eos_token_id=eos, **sizes)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(SHIPPED_DTYPES["llama"]).save_pretrained(folder)
    return folder


def build_qwen2(folder: Path) -> Path:
    """Qwen2: <|endoftext|> pads and ends, no begin token."""
    tokenizer = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None)
    size = save_tokenizer(folder, tokenizer, "Qwen2Tokenizer", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    (eos,) = ids(tokenizer, "<|endoftext|>")
    config = Qwen2Config(vocab_size=size, max_position_embeddings=512, eos_token_id=eos, num_key_value_heads=1, **TINY)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(SHIPPED_DTYPES["qwen2"]).save_pretrained(folder)
    return folder


def build_gemma(folder: Path) -> Path:
    """Gemma: <pad> 0, <eos> 1, <bos> 2 added first."""
    tokenizer = byte_level_bpe(["<pad>", "<eos>", "<bos>"], "<bos>")
    size = save_tokenizer(
        folder, tokenizer, "PreTrainedTokenizerFast", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    pad, eos, bos = ids(tokenizer, "<pad>", "<eos>", "<bos>")
    config = GemmaConfig(
        vocab_size=size,
        max_position_embeddings=512,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        num_key_value_heads=1,
        head_dim=16,
        **TINY,
    )
    torch.manual_seed(0)
    GemmaForCausalLM(config).to(SHIPPED_DTYPES["gemma"]).save_pretrained(folder)
    return folder


BUILDERS = {"polyglot": build_polyglot, "llama": build_llama, "qwen2": build_qwen2, "gemma": build_gemma}


def build_decoder(name: str, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """The family's imitation in `folder`, saved in the dtype it ships in, or `dtype` (the same values: a float32
    copy of a bf16 checkpoint holds exactly its numbers)."""
    folder.mkdir(parents=True)
    BUILDERS[name](folder)
    if dtype is not None:
        resave(folder, dtype)
    return folder


def resave(folder: Path, dtype: torch.dtype) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.to(dtype).save_pretrained(folder)
