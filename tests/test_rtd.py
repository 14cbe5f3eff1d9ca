"""Replaced-token-detection post-training (`objective: rtd`) and the post-training time budget."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_cli
from transformers import AutoModelForSequenceClassification, ElectraForPreTraining

from nikl_emotion.backends import rtd
from nikl_emotion.backends.backbone import offline_config, train_wordpiece_tokenizer
from nikl_emotion.backends.budget_clock import SAFETY
from nikl_emotion.backends.rtd import ReplacedTokenDetection, generator_config, sample_tokens
from nikl_emotion.training.step_plan import plan_steps


@pytest.fixture(scope="module")
def discriminator_config():
    tokenizer = train_wordpiece_tokenizer(
        ["오늘 공연 너무 좋았다", "정말 화가 난다", "내일이 기대된다"] * 30, vocab_size=200
    )
    return offline_config("offline:electra-mini", tokenizer)


def batch(vocab_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (4, 12), generator=generator)
    ids[:, 0], ids[2:, 9:] = 2, 0  # [CLS], padding in two rows
    attention = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.3) & (attention == 1)
    chosen[:, 0] = False
    labels[chosen] = ids[chosen]
    masked = ids.clone()
    masked[chosen] = 4  # [MASK]
    return masked, attention, labels


def test_the_generator_is_a_quarter_wide_and_shares_the_discriminators_embeddings(discriminator_config):
    config = generator_config(discriminator_config, 0.25)
    assert (config.hidden_size, config.num_hidden_layers, config.embedding_size) == (32, 4, 128)
    model = ReplacedTokenDetection(ElectraForPreTraining(discriminator_config))
    assert model.generator.embeddings is model.discriminator.electra.embeddings
    # stored once: a checkpoint (safetensors) refuses tensors stored under two names
    pointers = [tensor.data_ptr() for tensor in model.state_dict().values()]
    assert len(pointers) == len(set(pointers))
    assert not any(key.startswith("generator.embeddings.") for key in model.state_dict())


def test_the_rtd_loss_matches_the_papers_formula(discriminator_config, monkeypatch):
    torch.manual_seed(0)
    model = ReplacedTokenDetection(ElectraForPreTraining(discriminator_config), discriminator_weight=50.0).eval()
    masked, attention, labels = batch(discriminator_config.vocab_size)
    # the generator's most likely token instead of a sample, so the reference can reproduce the corruption
    monkeypatch.setattr(rtd, "sample_tokens", lambda logits: logits.argmax(-1))
    loss = model(masked, attention_mask=attention, labels=labels).loss

    # reference: the generator's MLM over the full vocabulary (output layer = the shared token embeddings),
    # cross-entropy on the masked positions; the discriminator's own ElectraForPreTraining loss on the corruption
    hidden = model.generator(input_ids=masked, attention_mask=attention).last_hidden_state
    vocabulary = model.generator_predictions(hidden) @ model.discriminator.electra.embeddings.word_embeddings.weight.T
    logits = vocabulary + model.generator_bias
    selected = labels != -100
    generator_loss = F.cross_entropy(logits[selected], labels[selected])
    original = torch.where(selected, labels, masked)
    corrupted = original.clone()
    corrupted[selected] = logits[selected].argmax(-1)
    replaced = (corrupted != original).long()
    discriminator_loss = model.discriminator(corrupted, attention_mask=attention, labels=replaced).loss
    torch.testing.assert_close(loss, generator_loss + 50.0 * discriminator_loss, rtol=1e-5, atol=1e-5)


def test_a_batch_without_masked_tokens_does_not_stop_training(discriminator_config):
    model = ReplacedTokenDetection(ElectraForPreTraining(discriminator_config))
    masked, attention, labels = batch(discriminator_config.vocab_size)
    nothing = torch.full_like(labels, -100)  # a last, short batch can draw no masked position at all
    # the Trainer passes the step's count of masked tokens: 0 here (an epoch's last batch, one short row)
    loss = model(masked, attention_mask=attention, labels=nothing, num_items_in_batch=torch.tensor(0)).loss
    loss.backward()  # it crashed here once, 1,331 steps into a NIKL run, and once turned every weight NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # weighted by its share (none) of the step's masked tokens: it adds nothing, as it adds no generator loss
    assert torch.isfinite(loss) and loss == 0


def test_tokens_are_sampled_from_the_generators_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    counts = torch.bincount(sample_tokens(logits), minlength=3) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_both_losses_train_the_shared_embeddings(discriminator_config):
    model = ReplacedTokenDetection(ElectraForPreTraining(discriminator_config))
    masked, attention, labels = batch(discriminator_config.vocab_size)
    model(masked, attention_mask=attention, labels=labels).loss.backward()
    for name in (
        "generator.encoder.layer.0.attention.self.query.weight",
        "generator_predictions.dense.weight",
        "discriminator.electra.encoder.layer.0.attention.self.query.weight",
        "discriminator.electra.embeddings.word_embeddings.weight",
        "generator_bias",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_a_budget_plan_fits_the_minutes_left():
    plan = plan_steps(10, spent_seconds=60, step_seconds=0.2, steps_per_epoch=500, evaluation_seconds=5)
    assert plan["planned_seconds"] <= 10 * 60 * SAFETY - 60
    assert plan["planned_seconds"] + 0.2 + 5 > 10 * 60 * SAFETY - 60 - 5  # and wastes at most a step and an evaluation
    assert plan["epochs"] == round(plan["expected_steps"] / 500, 2) and plan["max_steps"] > plan["expected_steps"]
    assert plan["training_seconds"] == pytest.approx(10 * 60 * SAFETY - 60 - 5)  # the final evaluation follows
    late = plan_steps(1, spent_seconds=120, step_seconds=0.2, steps_per_epoch=500)  # over already
    assert late["expected_steps"] == 1 and late["training_seconds"] == 0.2


def test_rtd_post_training_under_a_budget_gives_a_folder_train_py_fine_tunes(tmp_path):
    out = tmp_path / "rtd"
    result = run_cli(
        "post_train.py",
        ROOT / "configs" / "post_train-quickstart.yaml",
        "--objective",
        "rtd",
        "--time_budget_minutes",
        "0.25",
        "--output_dir",
        out,
    )
    assert "s per optimizer step measured on this machine" in result.stderr
    summary = json.loads((out / "post_train.json").read_text())
    assert summary["objective"] == "rtd" and summary["eval_loss_after"] < summary["eval_loss_before"]
    plan = summary["time_budget"]
    assert plan["carried_out"]["schedule_progress"] == 1.0 and summary["seconds"] <= 0.25 * 60
    assert not (out / "time_budget.json").exists() and not (out / "checkpoints").exists()
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert all(key.startswith("classifier.") for key in info["missing_keys"])  # the whole encoder was pretrained
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        out,
        "--output_dir",
        tmp_path / "fine",
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "1",
    )


def test_rtd_refuses_a_backbone_without_a_discriminator(tmp_path):
    result = run_cli(
        "post_train.py",
        ROOT / "configs" / "post_train-quickstart.yaml",
        "--objective",
        "rtd",
        "--model_name_or_path",
        "offline:bert-tiny",
        "--output_dir",
        tmp_path / "out",
        check=False,
    )
    assert result.returncode != 0 and "objective: rtd trains an ELECTRA discriminator" in result.stderr
