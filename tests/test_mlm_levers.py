"""Post-training's efficiency levers (issue 36): packing, pretraining dropout, the head on masked positions only,
the held-out loss at a fixed masking rate."""

import json

import pytest
import torch
import yaml
from conftest import ROOT, SAMPLE_TRAIN, run_cli
from datasets import Dataset
from transformers import AutoConfig, AutoModelForMaskedLM

from nikl_emotion.backends import masked_lm
from nikl_emotion.backends.backbone import offline_config, train_wordpiece_tokenizer
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training import post_training
from nikl_emotion.training.packing import pack_rows

CONFIG = ROOT / "configs" / "post_train-quickstart.yaml"


def encoded_rows(sizes):
    """Rows like the pair encoding's: [CLS] text [SEP] target [SEP], token types 0 then 1."""
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "length": []}
    for row, size in enumerate(sizes):
        ids = ([2] + [100 + row] * (size - 4) + [3, 7, 3])[:size]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * size)
        rows["token_type_ids"].append([0] * (size - 2) + [1] * 2)
        rows["length"].append(size)
    return Dataset.from_dict(rows)


def test_packing_fills_blocks_with_whole_texts_and_restarts_positions():
    sizes = [10, 12, 30, 8, 70, 5, 25]
    blocks = pack_rows(encoded_rows(sizes), max_length=40)
    assert all(length <= 40 or length == 70 for length in blocks["length"])  # a text longer than a block stays alone
    # every token, in order, once; token types kept per text
    flat = [token for block in blocks["input_ids"] for token in block]
    assert flat == [token for row in encoded_rows(sizes)["input_ids"] for token in row]
    flat_types = [t for block in blocks["token_type_ids"] for t in block]
    assert flat_types == [t for row in encoded_rows(sizes)["token_type_ids"] for t in row]
    # first fit: 10 + 12 (30 would overflow), 30 + 8, 70, 5 + 25
    assert blocks["length"] == [22, 38, 70, 30]
    for block, positions in zip(blocks["input_ids"], blocks["position_ids"]):
        starts = [i for i, token in enumerate(block) if token == 2]  # each text's [CLS] is at position 0
        assert [positions[i] for i in starts] == [0] * len(starts) and positions[0] == 0
        assert len(positions) == len(block) and max(positions) < 70


def test_the_masked_positions_head_with_packed_positions_gives_the_models_own_loss():
    texts = load_jsonl(SAMPLE_TRAIN)["text"]
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=400)
    config = offline_config("offline:electra-tiny", tokenizer)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    full = AutoModelForMaskedLM.from_config(config)
    sparse = AutoModelForMaskedLM.from_config(config)
    sparse.load_state_dict(full.state_dict())
    encoded = Dataset.from_list([{**tokenizer(t), "length": len(tokenizer(t)["input_ids"])} for t in texts[:24]])
    packed = pack_rows(encoded, 64).remove_columns("length")
    collator = post_training._MLMCollator(tokenizer, mlm_probability=0.3, seed=0)
    batch = collator([packed[i] for i in range(len(packed))])
    assert "position_ids" in batch and batch["position_ids"].shape == batch["input_ids"].shape
    expected = full(**batch).loss
    assert masked_lm.use_masked_positions_head(sparse)
    torch.testing.assert_close(sparse(**batch).loss, expected, rtol=1e-5, atol=1e-6)
    unpacked = full(**{k: v for k, v in batch.items() if k != "position_ids"}).loss
    assert not torch.isclose(unpacked, expected)  # the positions reach the model


def test_the_levers_train_a_folder_that_fine_tunes_with_its_own_dropout(tmp_path):
    out = tmp_path / "post"
    run_cli(
        "post_train.py",
        CONFIG,
        "--output_dir",
        out,
        "--max_steps",
        "12",
        "--eval_strategy",
        "no",
        "--pretraining_dropout",
        "0",
        "--pack_sequences",
        "true",
        "--mlm_probability",
        "0.4",
        "--masked_positions_head",
        "false",
    )
    summary = json.loads((out / "post_train.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 12 and summary["eval_loss_after"] < summary["eval_loss_before"]
    config = AutoConfig.from_pretrained(out)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1  # fine-tuning's, not 0
    resolved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["pack_sequences"] is True and resolved["pretraining_dropout"] == 0


def test_the_trainer_drops_dropout_while_post_training_and_holds_out_at_a_fixed_rate(tmp_path):
    settings = post_training.parse_post_train_config(
        [str(CONFIG), "--output_dir", str(tmp_path / "o"), "--pretraining_dropout", "0", "--mlm_probability", "0.4"]
    )
    texts = load_jsonl(SAMPLE_TRAIN)["text"][:50]
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=300)
    model = AutoModelForMaskedLM.from_config(offline_config("offline:electra-tiny", tokenizer))
    rows = Dataset.from_list([{**tokenizer(t), "length": len(tokenizer(t)["input_ids"])} for t in texts])
    trainer = post_training._post_trainer(post_training._PostTrainInputs(model, tokenizer, rows, rows), settings)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.config.hidden_dropout_prob == 0.1
    assert trainer.data_collator.mlm_probability == 0.4
    assert trainer.eval_collator.mlm_probability == post_training.HELD_OUT_MLM_PROBABILITY == 0.15


def test_rtd_refuses_the_dense_head_it_would_ignore(tmp_path):
    with pytest.raises(PipelineError, match="masked_positions_head"):
        post_training.parse_post_train_config(
            [str(CONFIG), "--output_dir", str(tmp_path / "o"), "--objective", "rtd", "--masked_positions_head", "false"]
        )


@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_a_pretraining_dropout_outside_0_1_is_refused(value, tmp_path):
    with pytest.raises(PipelineError, match="pretraining_dropout"):
        post_training.parse_post_train_config(
            [str(CONFIG), "--output_dir", str(tmp_path / "o"), "--pretraining_dropout", value]
        )
