"""Fine-tuning techniques (techniques.py, averaging.py): each checked against a formula written here independently,
on a tiny BERT trained by SGD with learning rate 1, so a parameter's change is exactly minus its gradient."""

import copy

import pytest
import torch
from conftest import SAMPLE_TRAIN
from torch.nn import functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from nikl_emotion.backends.averaging import WeightAveraging
from nikl_emotion.backends.backbone import classification_config_kwargs, train_wordpiece_tokenizer
from nikl_emotion.backends.emotion_trainer import TRAINER_COLUMNS, EmotionTrainer
from nikl_emotion.backends.losses import build_loss
from nikl_emotion.backends.techniques import (
    Adversary,
    enable_multi_sample_dropout,
    layerwise_parameter_groups,
    parameter_depths,
    rdrop_divergence,
)
from nikl_emotion.base.checkpoint_files import AVERAGING_STATE_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.batching import PaddingCollator
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def setup():
    rows = load_jsonl(SAMPLE_TRAIN).select(range(8))
    tokenizer = train_wordpiece_tokenizer(load_jsonl(SAMPLE_TRAIN)["text"], vocab_size=500)
    pre = Preprocessing(CleaningOptions())
    encoded = encode(clean(rows, pre), tokenizer, pre)
    encoded = encoded.select_columns([c for c in TRAINER_COLUMNS if c in encoded.column_names])
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **TINY,
        **classification_config_kwargs(),
    )
    torch.manual_seed(0)
    initial = BertForSequenceClassification(config).state_dict()
    return tokenizer, encoded, config, initial


def fresh(setup):
    _, _, config, initial = setup
    model = BertForSequenceClassification(config)
    model.load_state_dict(initial)
    return model


def sgd_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
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
    values.update(overrides)
    return TrainingArguments(**values)


def step_change(setup, tmp_path, **trainer_kwargs) -> dict:
    """initial - after one SGD step (lr 1) of EmotionTrainer with BCE on the 8 rows."""
    tokenizer, encoded, _, initial = setup
    model = fresh(setup)
    trainer = EmotionTrainer(
        model=model,
        args=sgd_args(tmp_path),
        train_dataset=encoded,
        processing_class=tokenizer,
        data_collator=PaddingCollator(tokenizer),
        loss_fn=build_loss("bce", reduction="none"),
        **trainer_kwargs,
    )
    trainer.train()
    return {n: initial[n] - p.detach() for n, p in model.named_parameters()}


def batch_of(setup):
    tokenizer, encoded, _, _ = setup
    batch = PaddingCollator(tokenizer)([encoded[i] for i in range(len(encoded))])
    return batch, batch.pop("labels").float()


# --- layer-wise learning-rate decay ---


def test_parameter_depths_follow_the_encoder_layers(setup):
    depths, layers = parameter_depths(fresh(setup))
    assert layers == 2
    assert depths["bert.embeddings.word_embeddings.weight"] == 0
    assert depths["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["bert.encoder.layer.1.output.dense.bias"] == 2
    assert depths["bert.pooler.dense.weight"] == 3 and depths["classifier.weight"] == 3


def test_layerwise_decay_scales_each_layer_step_by_decay_to_its_depth(setup, tmp_path):
    plain = step_change(setup, tmp_path / "plain")
    decayed = step_change(setup, tmp_path / "llrd", layerwise_lr_decay=0.5)
    expected_factor = {
        "bert.embeddings.": 0.125,
        "bert.encoder.layer.0.": 0.25,
        "bert.encoder.layer.1.": 0.5,
        "bert.pooler.": 1.0,
        "classifier.": 1.0,
    }
    checked = 0
    for name, change in plain.items():
        factor = next(f for prefix, f in expected_factor.items() if name.startswith(prefix))
        torch.testing.assert_close(decayed[name], change * factor, rtol=1e-4, atol=1e-7, msg=name)
        checked += change.abs().max().item() > 0
    assert checked > 10


def test_layerwise_groups_keep_the_trainers_weight_decay_split(setup):
    model = fresh(setup)
    no_decay = {n for n, _ in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n}
    groups = layerwise_parameter_groups(model, 1e-3, 0.8, 0.01, {n for n, _ in model.named_parameters()} - no_decay)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        names = [by_id[id(p)] for p in group["params"]]
        assert all((n in no_decay) == (group["weight_decay"] == 0.0) for n in names)
    assert sorted({round(g["lr"], 12) for g in groups}) == sorted(round(1e-3 * 0.8**k, 12) for k in range(4))


def test_layerwise_decay_refuses_a_model_without_numbered_layers():
    with pytest.raises(PipelineError, match="layerwise_lr_decay: found no numbered encoder layers"):
        parameter_depths(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- R-Drop ---


def bernoulli_kl(p, q):
    return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))


def test_rdrop_divergence_is_half_the_symmetric_bernoulli_kl():
    torch.manual_seed(1)
    a, b = torch.randn(5, 8) * 3, torch.randn(5, 8) * 3
    p, q = torch.sigmoid(a.double()), torch.sigmoid(b.double())
    expected = 0.5 * (bernoulli_kl(p, q) + bernoulli_kl(q, p))
    torch.testing.assert_close(rdrop_divergence(a.double(), b.double()), expected)
    assert torch.isfinite(rdrop_divergence(torch.tensor([60.0]), torch.tensor([-60.0]))).all()  # no log(0)


def test_rdrop_loss_is_mean_of_two_dropout_passes_plus_alpha_kl(setup, tmp_path):
    tokenizer, encoded, config, initial = setup
    dropped = copy.deepcopy(config)
    dropped.hidden_dropout_prob = 0.3
    model = BertForSequenceClassification(dropped)
    model.load_state_dict(initial)
    model.train()
    trainer = EmotionTrainer(
        model=model,
        args=sgd_args(tmp_path),
        processing_class=tokenizer,
        loss_fn=build_loss("bce", reduction="none"),
        rdrop_alpha=2.0,
    )
    batch, labels = batch_of(setup)
    torch.manual_seed(7)
    loss = trainer.compute_loss(model, {**batch, "labels": labels})
    # reference: the same two masks (one forward of the doubled batch, same seed), BCE and KL written out
    torch.manual_seed(7)
    logits = model(**{k: torch.cat([v, v]) for k, v in batch.items()}).logits
    first, second = logits[: len(labels)], logits[len(labels) :]
    assert not torch.allclose(first, second)  # dropout made the passes differ
    bce = lambda z: F.binary_cross_entropy_with_logits(z, labels, reduction="none")  # noqa: E731
    p, q = torch.sigmoid(first.double()), torch.sigmoid(second.double())
    kl = 0.5 * (bernoulli_kl(p, q) + bernoulli_kl(q, p))
    expected = (0.5 * (bce(first) + bce(second)) + 2.0 * kl.float()).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_rdrop_is_off_in_evaluation(setup, tmp_path):
    tokenizer, _, _, _ = setup
    model = fresh(setup).eval()
    trainer = EmotionTrainer(
        model=model,
        args=sgd_args(tmp_path),
        processing_class=tokenizer,
        loss_fn=build_loss("bce", reduction="none"),
        rdrop_alpha=5.0,
    )
    batch, labels = batch_of(setup)
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, {**batch, "labels": labels}, return_outputs=True)
        assert outputs.logits.shape == labels.shape
        torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(model(**batch).logits, labels))


# --- multi-sample dropout ---


def test_multi_sample_dropout_on_a_linear_head_averages_masks_of_the_pooled_output(setup):
    _, _, config, initial = setup
    dropped = copy.deepcopy(config)
    dropped.classifier_dropout = 0.5
    model = BertForSequenceClassification(dropped)
    model.load_state_dict(initial)
    keys = list(model.state_dict())
    enable_multi_sample_dropout(model, 4)
    assert list(model.state_dict()) == keys  # checkpoints keep their format
    batch, _ = batch_of(setup)
    model.train()
    torch.manual_seed(3)
    logits = model(**batch).logits
    torch.manual_seed(3)
    pooled = model.bert(**batch).pooler_output
    expected = torch.stack([model.classifier.forward(F.dropout(pooled, 0.5, training=True)) for _ in range(4)]).mean(0)
    torch.testing.assert_close(logits, expected)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model.classifier.forward(model.bert(**batch).pooler_output))


def test_multi_sample_dropout_on_a_head_with_dropout_inside_runs_it_n_times(setup):
    tokenizer, _, _, _ = setup
    config = ElectraConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.5,
        **TINY,
        **classification_config_kwargs(),
    )
    torch.manual_seed(0)
    model = ElectraForSequenceClassification(config)
    enable_multi_sample_dropout(model, 3)
    batch, _ = batch_of(setup)
    model.train()
    torch.manual_seed(5)
    logits = model(**batch).logits
    torch.manual_seed(5)
    hidden = model.electra(**batch).last_hidden_state
    expected = torch.stack([model.classifier.forward(hidden) for _ in range(3)]).mean(0)
    torch.testing.assert_close(logits, expected)


# --- adversarial training ---


def reference_adversarial_change(setup, method: str, epsilon: float) -> dict:
    """Clean gradient, weights moved along it, perturbed gradient added, weights put back: by hand."""
    model = fresh(setup)
    model.train()
    batch, labels = batch_of(setup)
    F.binary_cross_entropy_with_logits(model(**batch).logits, labels).backward()
    params = dict(model.named_parameters())
    if method == "fgm":
        targets = ["bert.embeddings.word_embeddings.weight"]
    else:
        targets = [n for n, p in params.items() if p.dim() > 1 and "weight" in n]
    saved = {n: params[n].detach().clone() for n in targets}
    with torch.no_grad():
        for n in targets:
            g = params[n].grad
            size = epsilon if method == "fgm" else epsilon * saved[n].norm()
            params[n].add_(size * g / g.norm())
    F.binary_cross_entropy_with_logits(model(**batch).logits, labels).backward()
    return {n: p.grad.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize("method, epsilon", [("fgm", 1.0), ("awp", 0.01)])
def test_adversarial_step_adds_the_gradient_at_the_perturbed_weights(setup, tmp_path, method, epsilon):
    change = step_change(setup, tmp_path, adversary=Adversary(method, epsilon))
    plain = step_change(setup, tmp_path / "plain")
    expected = reference_adversarial_change(setup, method, epsilon)
    moved = 0
    for name, grad in expected.items():
        # after the step the weights are initial - (clean + perturbed gradient): the perturbation was undone
        torch.testing.assert_close(change[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.allclose(change[name], plain[name], atol=1e-7)
    assert moved > 0


def test_adversary_restores_weights_exactly():
    layer = torch.nn.Embedding(10, 4)
    layer.weight.grad = torch.randn(10, 4)
    model = torch.nn.Module()
    model.get_input_embeddings = lambda: layer
    before = layer.weight.detach().clone()
    adversary = Adversary("fgm")
    assert adversary.attack(model)
    assert torch.linalg.vector_norm(layer.weight.detach() - before).item() == pytest.approx(1.0, rel=1e-5)
    adversary.restore()
    assert torch.equal(layer.weight.detach(), before)
    layer.weight.grad = torch.zeros(10, 4)
    assert not adversary.attack(model)  # no gradient, no move


# --- EMA and SWA ---


class Recorder(TrainerCallback):
    """Raw weights after each optimizer step and at each epoch end, and the weights each evaluation sees."""

    def __init__(self):
        self.steps, self.epochs, self.evaluated = [], [], []

    @staticmethod
    def snapshot(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append(self.snapshot(model))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.epochs.append(self.snapshot(model))


class EvaluationRecorder(TrainerCallback):
    def __init__(self):
        self.evaluated = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.evaluated.append({n: p.detach().clone() for n, p in model.named_parameters()})


def averaged_training(setup, tmp_path, averaging, epochs=3, resume=None, stop_after_step=None, **arg_overrides):
    tokenizer, encoded, _, _ = setup
    model = fresh(setup)
    recorder, evaluations = Recorder(), EvaluationRecorder()
    callbacks = [recorder, averaging, evaluations]
    if stop_after_step is not None:

        class Stop(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step >= stop_after_step:
                    control.should_training_stop = True

        callbacks.append(Stop())
    args = sgd_args(
        tmp_path,
        max_steps=-1,
        num_train_epochs=epochs,
        per_device_train_batch_size=4,
        learning_rate=0.5,
        eval_strategy="epoch",
        save_strategy="epoch",
        **arg_overrides,
    )
    trainer = EmotionTrainer(
        model=model,
        args=args,
        train_dataset=encoded,
        eval_dataset=encoded,
        processing_class=tokenizer,
        data_collator=PaddingCollator(tokenizer),
        loss_fn=build_loss("bce", reduction="none"),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, recorder, evaluations


def reference_ema(snapshots: list[dict], initial: dict, decay: float) -> dict:
    """EMA after `initial` and then each snapshot, the t-th update with decay min(decay, (1 + t) / (10 + t))."""
    average = {n: initial[n].clone() for n in initial}
    for t, weights in enumerate(snapshots, start=1):
        d = min(decay, (1 + t) / (10 + t))
        average = {n: d * average[n] + (1 - d) * weights[n] for n in average}
    return average


def test_ema_weights_are_evaluated_and_kept_at_the_end(setup, tmp_path):
    model, recorder, evaluations = averaged_training(
        setup, tmp_path, WeightAveraging(ema_decay=0.6), load_best_model_at_end=False
    )
    assert len(recorder.steps) == 6 and len(evaluations.evaluated) == 3
    first = recorder.steps[0]  # the EMA starts from the weights after the first step
    for step, evaluated in ((2, evaluations.evaluated[0]), (6, evaluations.evaluated[2])):
        expected = reference_ema(recorder.steps[1:step], first, 0.6)
        for name in expected:
            torch.testing.assert_close(evaluated[name], expected[name], msg=name)
    final = {n: p.detach() for n, p in model.named_parameters()}
    expected = reference_ema(recorder.steps[1:], first, 0.6)
    assert not torch.allclose(expected["classifier.weight"], recorder.steps[-1]["classifier.weight"])
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], msg=name)


def test_swa_averages_the_last_epochs_end_weights(setup, tmp_path):
    model, recorder, evaluations = averaged_training(
        setup, tmp_path, WeightAveraging(swa_epochs=2), epochs=3, load_best_model_at_end=False
    )
    raw_epoch_ends = recorder.epochs  # recorded before the averaging callback swaps anything in
    # epoch 1 is evaluated raw; epochs 2 and 3 with the mean of the SWA epochs so far
    for name in raw_epoch_ends[0]:
        torch.testing.assert_close(evaluations.evaluated[0][name], raw_epoch_ends[0][name])
        torch.testing.assert_close(evaluations.evaluated[1][name], raw_epoch_ends[1][name])
        mean = (raw_epoch_ends[1][name] + raw_epoch_ends[2][name]) / 2
        torch.testing.assert_close(evaluations.evaluated[2][name], mean)
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), mean)
    # training went on from the raw weights, not from the average
    assert not torch.allclose(raw_epoch_ends[2]["classifier.weight"], evaluations.evaluated[2]["classifier.weight"])


def test_best_checkpoint_holds_the_averaged_weights_and_resume_is_exact(setup, tmp_path):
    full, _, evaluations = averaged_training(
        setup, tmp_path / "full", WeightAveraging(ema_decay=0.6, swa_epochs=2), load_best_model_at_end=False
    )
    # interrupted after epoch 2's checkpoint, then resumed from it
    averaged_training(
        setup,
        tmp_path / "cut",
        WeightAveraging(ema_decay=0.6, swa_epochs=2),
        load_best_model_at_end=False,
        stop_after_step=4,
    )
    checkpoint = tmp_path / "cut" / "checkpoint-4"
    assert (checkpoint / AVERAGING_STATE_FILE).is_file()
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "model.safetensors")
    torch.testing.assert_close(saved["classifier.weight"], evaluations.evaluated[1]["classifier.weight"])
    resumed, _, _ = averaged_training(
        setup,
        tmp_path / "cut",
        WeightAveraging(ema_decay=0.6, swa_epochs=2),
        load_best_model_at_end=False,
        resume=str(checkpoint),
    )
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(b, a, msg=name)


def test_weight_averaging_needs_a_setting():
    with pytest.raises(ValueError):
        WeightAveraging()


# --- pseudo-labels ---


def test_pseudo_labels_come_from_the_same_fold_of_the_finished_run(tiny_run, tmp_path):
    from conftest import ROOT, run_cli

    from nikl_emotion.base.fileio import read_probs

    out = tmp_path / "student"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "2",
        "--pseudo_label_run",
        tiny_run,
        "--pseudo_label_threshold",
        "0.51",
    )
    import json

    for k in range(2):
        _, teacher = read_probs(tiny_run / f"fold_{k}" / "test_probs.jsonl")
        # written out here: all 8 labels at >= 0.51 or <= 0.49, and one at >= 0.51 (a low bar: the tiny teacher's
        # confidence varies from run to run, and the test needs some rows to count)
        expected = sum(1 for row in teacher if all(p >= 0.51 or p <= 0.49 for p in row) and max(row) >= 0.51)
        metrics = json.loads((out / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["pseudo_label_rows"] == expected > 0
    config = (out / "config.yaml").read_text(encoding="utf-8")
    assert "pseudo_label_run:" in config and "pseudo_label_threshold: 0.51" in config


@pytest.mark.parametrize(
    "change, message",
    [
        (["--seed", "7"], "validated on other rows than this run's fold 0"),
        (["--num_folds", "3"], "has 2 folds, this run 3"),
    ],
)
def test_pseudo_labels_from_other_folds_are_refused(tiny_run, tmp_path, change, message):
    from conftest import ROOT

    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    with pytest.raises(PipelineError) as caught:
        run_training(
            parse_config(
                [
                    str(ROOT / "configs" / "quickstart.yaml"),
                    "--output_dir",
                    str(tmp_path / "s"),
                    "--num_folds",
                    "2",
                    "--pseudo_label_run",
                    str(tiny_run),
                    *change,
                ]
            )
        )
    assert message in str(caught.value)
    assert not (tmp_path / "s").exists()  # refused before anything was written
