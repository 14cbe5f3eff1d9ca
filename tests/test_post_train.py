"""post_train.py (MLM on unlabelled task text) and train.py --hp-search, on the tiny offline model."""

import csv
import dataclasses
import json

import pytest
import yaml
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.commands.cli import pop_option

CONFIG = ROOT / "configs" / "post_train-quickstart.yaml"


@pytest.fixture(scope="module")
def post_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("post") / "mlm"
    result = run_cli(
        "post_train.py",
        CONFIG,
        "--output_dir",
        out,
        "--max_steps",
        "60",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "30",
    )
    return out, result


def test_post_training_lowers_held_out_mlm_loss_and_saves_a_loadable_checkpoint(post_trained):
    out, result = post_trained
    summary = json.loads((out / "post_train.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 60
    # random init predicts ~uniformly over the vocabulary: ln(vocab) ~ 7; 60 steps must get well below that
    assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.5, summary
    assert summary["eval_rows"] > 0 and summary["train_rows"] > 500
    assert summary["files"] == [str(p.relative_to(ROOT)) for p in (SAMPLE_TRAIN, SAMPLE_DEV, SAMPLE_TEST)]
    assert not (out / "checkpoints").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=8)
    assert model.config.vocab_size == len(tokenizer)
    assert json.loads((out / "preprocessing.json").read_text(encoding="utf-8"))["input_format"] == "pair"
    assert "held-out MLM loss" in result.stdout


def test_a_finished_post_training_is_not_repeated_and_a_changed_one_is_refused(post_trained):
    out, _ = post_trained
    again = run_cli(
        "post_train.py",
        CONFIG,
        "--output_dir",
        out,
        "--max_steps",
        "60",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "30",
    )
    assert "nothing to do" in again.stderr
    changed = run_cli(
        "post_train.py",
        CONFIG,
        "--output_dir",
        out,
        "--max_steps",
        "60",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "30",
        "--mlm_probability",
        "0.3",
        check=False,
    )
    assert changed.returncode == 1 and "mlm_probability" in changed.stderr and changed.stderr.count("\n") == 1


def test_train_py_fine_tunes_the_post_trained_checkpoint(post_trained, tmp_path):
    out, _ = post_trained
    run_dir = tmp_path / "fine"
    result = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        out,
        "--output_dir",
        run_dir,
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "2",
    )
    assert "prepared differently" not in result.stdout + result.stderr  # same cleaning as the post-training config
    metrics = json.loads((run_dir / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    assert 0.0 <= metrics["micro_f1"] <= 1.0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model_name_or_path"] == str(out)
    assert not (run_dir / "backbone").exists()  # the post-trained tokenizer is used as it is


def test_fine_tuning_with_other_cleaning_than_post_training_names_the_keys(post_trained, tmp_path, caplog):
    from nikl_emotion.text.cleaning import CleaningOptions
    from nikl_emotion.text.preprocessing import Preprocessing, preprocessing_differences, warn_if_preprocessing_differs

    out, _ = post_trained
    learned = Preprocessing.load(str(out))
    assert preprocessing_differences(str(out), learned) == []
    assert preprocessing_differences(str(tmp_path), learned) == []  # no preprocessing.json: a hub or offline model
    other = Preprocessing(
        CleaningOptions(**{**dataclasses.asdict(learned.cleaning), "cleanse": not learned.cleaning.cleanse}),
        input_format="marker",
        max_seq_length=learned.max_seq_length,
    )
    differences = preprocessing_differences(str(out), other)
    assert (
        len(differences) == 2
        and differences[0].startswith("cleanse:")
        and differences[1].startswith("input_format: pair")
    )
    with caplog.at_level("WARNING", logger="nikl_emotion.text.preprocessing"):
        warn_if_preprocessing_differs(str(out), other)
    assert "cleanse" in caplog.text and "input_format" in caplog.text


def test_whole_word_masking_runs(tmp_path):
    out = tmp_path / "wwm"
    run_cli(
        "post_train.py",
        CONFIG,
        "--output_dir",
        out,
        "--max_steps",
        "4",
        "--whole_word_mask",
        "true",
        "--eval_strategy",
        "no",
        "--validation_fraction",
        "0.1",
    )
    assert json.loads((out / "post_train.json").read_text(encoding="utf-8"))["steps"] == 4


def test_hp_search_runs_trials_and_writes_its_table(tmp_path):
    out = tmp_path / "hp"
    result = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--hp-search",
        "2",
        "--output_dir",
        out,
        "--num_train_epochs",
        "2",
        "--num_folds",
        "2",
    )
    with open(out / "hp_search.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert all(r["state"] == "COMPLETE" and 0.0 <= float(r["micro_f1"]) <= 1.0 for r in rows)
    assert {
        "learning_rate",
        "weight_decay",
        "per_device_train_batch_size",
        "num_train_epochs",
        "warmup_steps",
        "label_smoothing",
        "pos_weight",
    } <= set(rows[0])
    assert rows[0]["learning_rate"] != rows[1]["learning_rate"]
    best = yaml.safe_load((out / "hp_search_best.yaml").read_text(encoding="utf-8"))
    assert best["learning_rate"] in {float(r["learning_rate"]) for r in rows}
    assert "hp search: 2 trials" in result.stdout
    assert not list(out.rglob("checkpoint-*"))  # trials are scored, not kept


def test_pop_option_takes_the_trial_count_out_of_argv():
    argv = ["c.yaml", "--hp-search", "3", "--fold", "1"]
    assert pop_option(argv, ("--hp-search",)) == 3 and argv == ["c.yaml", "--fold", "1"]
    argv = ["--hp-search=2"]
    assert pop_option(argv, ("--hp-search",)) == 2 and argv == []
    assert pop_option(["--fold", "1"], ("--hp-search",)) is None
    with pytest.raises(PipelineError, match="whole number"):
        pop_option(["--hp-search", "many"], ("--hp-search",))


@pytest.mark.parametrize("arch", ["electra", "bert"])
def test_masked_positions_head_gives_the_models_own_mlm_loss_and_gradients(arch):
    """Independent reference: the loss HF's *ForMaskedLM computes over every position."""
    import torch
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    from nikl_emotion.backends.backbone import offline_config, train_wordpiece_tokenizer
    from nikl_emotion.backends.masked_lm import use_masked_positions_head
    from nikl_emotion.text.data import load_jsonl

    texts = load_jsonl(SAMPLE_TRAIN)["text"]
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=400)
    config = offline_config(f"offline:{arch}-tiny", tokenizer)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    full = AutoModelForMaskedLM.from_config(config)
    sparse = AutoModelForMaskedLM.from_config(config)
    sparse.load_state_dict(full.state_dict())
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
    batch = collator([tokenizer(t) for t in texts[:16]])
    expected = full(**batch).loss
    expected.backward()
    assert use_masked_positions_head(sparse)
    got = sparse(**batch).loss
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(full.named_parameters(), sparse.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # with the step's token count given (gradient accumulation), the loss is the sum over that count
    count = int((batch["labels"] != -100).sum())
    torch.testing.assert_close(
        sparse(**batch, num_items_in_batch=2 * count).loss, expected.detach() / 2, rtol=1e-5, atol=1e-6
    )


def test_a_step_without_masked_tokens_leaves_the_weights_finite():
    """An epoch's last batch can be one short row with no masked position: the Trainer then counts 0 masked
    tokens for the step, and 0/0 would turn every weight NaN."""
    import torch
    from transformers import ElectraForMaskedLM

    from nikl_emotion.backends.backbone import offline_config, train_wordpiece_tokenizer
    from nikl_emotion.backends.masked_lm import use_masked_positions_head

    tokenizer = train_wordpiece_tokenizer(["오늘 공연 너무 좋았다"] * 30, vocab_size=100)
    model = ElectraForMaskedLM(offline_config("offline:electra-tiny", tokenizer))
    use_masked_positions_head(model)
    ids = torch.tensor([[2, 10, 11, 3]])
    loss = model(
        ids, attention_mask=torch.ones_like(ids), labels=torch.full_like(ids, -100), num_items_in_batch=torch.tensor(0)
    ).loss
    loss.backward()
    assert loss == 0 and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
