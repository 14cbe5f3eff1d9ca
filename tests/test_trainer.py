"""The Trainer subclass: its loss is correct under gradient accumulation."""

import numpy as np
import pytest
import torch
from conftest import SAMPLE_TRAIN
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from nikl_emotion.backends.backbone import classification_config_kwargs, train_wordpiece_tokenizer
from nikl_emotion.backends.emotion_trainer import TRAINER_COLUMNS, EmotionTrainer
from nikl_emotion.backends.losses import build_loss
from nikl_emotion.text.batching import PaddingCollator
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode


@pytest.fixture(scope="module")
def setup():
    rows = load_jsonl(SAMPLE_TRAIN).select(range(8))
    tokenizer = train_wordpiece_tokenizer(load_jsonl(SAMPLE_TRAIN)["text"], vocab_size=500)
    pre = Preprocessing(CleaningOptions())
    encoded = encode(clean(rows, pre), tokenizer, pre)
    encoded = encoded.select_columns([c for c in TRAINER_COLUMNS if c in encoded.column_names])
    assert len(set(encoded["length"])) > 1  # unequal lengths: padding differs between the two set-ups
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **classification_config_kwargs(),
    )
    torch.manual_seed(0)
    initial = BertForSequenceClassification(config).state_dict()
    return tokenizer, encoded, config, initial


LOSS_CASES = {
    "bce": lambda: build_loss("bce", reduction="none"),
    "bce-pos_weight-smoothing": lambda: build_loss("bce", reduction="none", label_smoothing=0.1, pos_weight=[2.0] * 8),
    "focal": lambda: build_loss("focal", reduction="none"),
    "asl": lambda: build_loss("asl", reduction="none"),
    "asl-no-grad-focus-smoothing": lambda: build_loss(
        "asl", reduction="none", disable_torch_grad_focal_loss=True, label_smoothing=0.1
    ),
}


def one_step(setup, tmp_path, batch_size, accumulation, reduction, loss="bce"):
    tokenizer, encoded, config, initial = setup
    model = BertForSequenceClassification(config)
    model.load_state_dict(initial)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=0,
        train_sampling_strategy="sequential",
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = EmotionTrainer(
        model=model,
        args=args,
        train_dataset=encoded,
        processing_class=tokenizer,
        data_collator=PaddingCollator(tokenizer),
        loss_fn=LOSS_CASES[loss](),
        loss_reduction=reduction,
    )
    trainer.train()
    # SGD with lr 1: the parameter change is exactly minus the gradient
    return {name: initial[name] - value for name, value in model.state_dict().items() if value.dtype.is_floating_point}


@pytest.mark.parametrize("loss", sorted(LOSS_CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(setup, tmp_path, reduction, loss):
    full = one_step(setup, tmp_path / "a", batch_size=8, accumulation=1, reduction=reduction, loss=loss)
    accumulated = one_step(setup, tmp_path / "b", batch_size=4, accumulation=2, reduction=reduction, loss=loss)
    assert max(full[n].abs().max().item() for n in full) > 1e-4  # the step moved the weights
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_mean_loss_step_equals_the_bce_gradient_of_the_whole_batch(setup, tmp_path):
    """Independent reference: the gradient of torch's BCEWithLogitsLoss(mean) over all 8 rows."""
    tokenizer, encoded, config, initial = setup
    model = BertForSequenceClassification(config)
    model.load_state_dict(initial)
    batch = PaddingCollator(tokenizer)([encoded[i] for i in range(8)])
    labels = batch.pop("labels")
    loss = torch.nn.BCEWithLogitsLoss()(model(**batch).logits, labels.float())
    loss.backward()
    step = one_step(setup, tmp_path, batch_size=4, accumulation=2, reduction="mean")
    weight = "classifier.weight"
    torch.testing.assert_close(step[weight], dict(model.named_parameters())[weight].grad, rtol=1e-4, atol=1e-6)


def test_evaluation_after_an_asl_step_runs_without_gradients(setup, tmp_path):
    tokenizer, encoded, config, initial = setup
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    loss_fn = build_loss("asl", reduction="none", disable_torch_grad_focal_loss=True)
    trainer = EmotionTrainer(
        model=model,
        args=args,
        train_dataset=encoded,
        eval_dataset=encoded,
        processing_class=tokenizer,
        data_collator=PaddingCollator(tokenizer),
        loss_fn=loss_fn,
    )
    trainer.train()
    assert torch.is_grad_enabled()
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])
    batch = PaddingCollator(tokenizer)([encoded[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        assert not torch.is_grad_enabled()
    assert not loss.requires_grad and torch.is_grad_enabled()


def test_auto_pos_weight_comes_from_the_training_split_only():
    from nikl_emotion.backends.emotion_trainer import make_loss
    from nikl_emotion.base.config import LossArguments

    labels = np.zeros((10, 8))
    labels[:2, 0] = 1  # 2 positives, 8 negatives -> 4
    labels[:5, 1] = 1  # 5 / 5 -> 1; labels 2..7 have no positive -> 1
    loss = make_loss(LossArguments(loss="bce", pos_weight="auto"), labels)
    assert loss.pos_weight.tolist() == [4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert make_loss(LossArguments(loss="bce"), labels).pos_weight is None


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["--loss", "focal", "--focal_alpha", "-1", "--focal_gamma", "0.5"], {"alpha": -1.0, "gamma": 0.5}),
        (
            [
                "--loss",
                "asl",
                "--asl_gamma_neg",
                "2",
                "--asl_clip",
                "0.1",
                "--asl_disable_torch_grad_focal_loss",
                "true",
            ],
            {"gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.1, "eps": 1e-8, "disable_torch_grad_focal_loss": True},
        ),
    ],
)
def test_the_config_keys_reach_the_loss_the_fold_trains_with(keys, expected, tmp_path):
    from conftest import ROOT

    from nikl_emotion.backends.emotion_trainer import make_loss
    from nikl_emotion.training.config_checks import parse_config

    argv = [str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path), "--label_smoothing", "0.1"]
    loss = make_loss(parse_config([*argv, *keys]).loss, np.zeros((4, 8)))
    assert {name: getattr(loss, name) for name in expected} == expected
    assert (loss.reduction, loss.label_smoothing) == ("none", 0.1)
