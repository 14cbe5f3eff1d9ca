"""`EmotionTrainer`: the Hugging Face Trainer of the encoder backend, with the pipeline's losses reduced so that
gradient accumulation and several processes give one big batch's gradients, the techniques that act inside a step,
and the fold's inputs (`fold_trainer_inputs`) shared by a fold's training
and the HP search."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer

from nikl_emotion.backends.averaging import weight_averaging
from nikl_emotion.backends.budget_clock import ClockScheduleMixin
from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.losses import MultiLabelLoss, loss_named
from nikl_emotion.backends.precision import autocast_dtype, ran_autocast
from nikl_emotion.backends.techniques import Adversary, layerwise_parameter_groups, rdrop_divergence, repeat_batch
from nikl_emotion.backends.trainer_parts import LengthListSamplerMixin
from nikl_emotion.base.config import LossArguments, RunSettings
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.metrics import score, sigmoid
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.text.batching import MODEL_INPUTS, PaddingCollator, length_order
from nikl_emotion.text.preprocessing import Preprocessing

__all__ = [
    "TRAINER_COLUMNS",
    "EmotionTrainer",
    "predict_in_order",
    "fold_trainer_inputs",
    "make_loss",
]


_MODEL_INPUT_COLUMNS = (*MODEL_INPUTS, "length")  # `length` feeds the sampler only


TRAINER_COLUMNS = (*_MODEL_INPUT_COLUMNS, "labels")


class EmotionTrainer(ClockScheduleMixin, LengthListSamplerMixin, Trainer):
    """Trainer whose loss comes from `losses.py`, reduced here so that gradient accumulation and multi-process runs
    give the same gradients as one big batch.

    `loss_fn` must return the element-wise (N, C) loss (`reduction="none"`); `loss_reduction` is "mean" (over all
    label elements of the optimizer step's batch) or "sum". The techniques of techniques.py that act inside a step
    come in as `rdrop_alpha`, `layerwise_lr_decay` and `adversary`.
    """

    def __init__(
        self,
        *args,
        loss_fn: MultiLabelLoss,
        loss_reduction: str = "mean",
        rdrop_alpha: float = 0.0,
        layerwise_lr_decay: float = 1.0,
        adversary: Adversary | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if loss_fn.reduction != "none":
            raise ValueError("EmotionTrainer reduces the loss itself: build loss_fn with reduction='none'")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be mean or sum, got {loss_reduction!r}")
        self.loss_fn = loss_fn
        self.loss_reduction = loss_reduction
        self.rdrop_alpha = rdrop_alpha
        self.layerwise_lr_decay = layerwise_lr_decay
        self.adversary = adversary

    def create_optimizer(self, model=None):
        if self.layerwise_lr_decay == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = layerwise_parameter_groups(
            opt_model,
            self.args.learning_rate,
            self.layerwise_lr_decay,
            self.args.weight_decay,
            self.get_decay_parameter_names(opt_model),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model")}
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)  # each group's own lr wins over the kwargs' one
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.adversary is None:
            return super().training_step(model, inputs, num_items_in_batch)
        # the clean pass's backward leaves the gradients the attack follows; the perturbed pass's loss is scaled
        # exactly like it (same training_step) and its gradients add to them; the weights come back before the step
        loss = super().training_step(model, dict(inputs), num_items_in_batch)
        if self.adversary.attack(self.model):
            try:
                super().training_step(model, dict(inputs), num_items_in_batch)
            finally:
                self.adversary.restore()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        if self.rdrop_alpha and model.training:
            outputs = model(**repeat_batch(inputs))
            first, second = outputs.logits.float().chunk(2)
            elementwise = 0.5 * (
                self.loss_fn(first, labels.float()) + self.loss_fn(second, labels.float())
            ) + self.rdrop_alpha * rdrop_divergence(first, second)
        else:
            outputs = model(**inputs)
            elementwise = self.loss_fn(outputs.logits.float(), labels.float())
        # DDP averages gradients over processes; a loss normalised over the global batch is scaled back up
        processes = self.accelerator.num_processes if model.training else 1
        if self.loss_reduction == "sum":
            loss = elementwise.sum() * processes
            self.loss_is_scaled_for_ga = True  # a sum over micro-batches is already the step's sum
        elif num_items_in_batch is not None and model.training:
            # label elements over all micro-batches of this optimizer step (and all processes, see below)
            loss = elementwise.sum() / num_items_in_batch * processes
            self.loss_is_scaled_for_ga = True
        else:
            loss = elementwise.mean()
            self.loss_is_scaled_for_ga = False  # Trainer divides by the accumulation steps
        return (loss, outputs) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset):
        # the evaluation dataset arrives sorted by length (`fold_trainer_inputs`): keep that order, so each batch
        # pads little; with several processes accelerate shards the batches and gathers them back in order
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _get_num_items_in_batch(self, batch_samples, device):
        # count label elements even when the model's forward takes no loss kwargs
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum(batch["labels"].numel() for batch in batch_samples)
        count = torch.tensor(count, device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count


def predict_in_order(trainer: Trainer, preprocessing: Preprocessing, rows: Dataset) -> np.ndarray:
    """Sigmoid probabilities in `rows`' order from the model in memory, through the same `EmotionClassifier` that
    inference.py builds from the saved best/. Every process must call this: under `accelerate launch` each runs its
    share of the length-sorted batches and the shares are summed (each row is predicted exactly once)."""
    # under the autocast the fold trained with, as the saved best/ is served (precision.py)
    classifier = CheckpointClassifier.from_model(
        trainer.model,
        trainer.processing_class,
        preprocessing,
        trainer.args.device,
        autocast_dtype(ran_autocast(trainer.accelerator)),
    )
    state = trainer.accelerator.state
    logits = classifier.predict_logits(
        rows, batch_size=trainer.args.per_device_eval_batch_size, part=state.process_index, parts=state.num_processes
    )
    if state.num_processes > 1:
        logits = trainer.accelerator.reduce(torch.from_numpy(logits).to(trainer.args.device), "sum").cpu().numpy()
    return sigmoid(logits)


def fold_trainer_inputs(train_rows: Dataset, val_rows: Dataset, tokenizer, settings: RunSettings) -> dict:
    """EmotionTrainer's data, collator, metric, early stopping, loss and techniques for one fold (train_fold and the
    HP search); `val_rows` are the rows that choose the epoch (FoldData.choosing_rows)."""
    columns = [c for c in TRAINER_COLUMNS if c in train_rows.column_names]
    patience, loss_args, techniques = settings.stopping.early_stopping_patience, settings.loss, settings.techniques
    callbacks = [EarlyStoppingCallback(patience)] if patience else []
    averaging = weight_averaging(techniques.ema_decay, techniques.swa_epochs)
    if averaging is not None:
        callbacks.append(averaging)
    return {
        "train_dataset": train_rows.select_columns(columns),
        "eval_dataset": val_rows.select(length_order(val_rows)).select_columns(columns),
        "processing_class": tokenizer,
        "data_collator": PaddingCollator(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        "compute_metrics": _make_compute_metrics(fixed_rule(settings.decision)),
        "callbacks": callbacks,
        "loss_fn": make_loss(loss_args, np.asarray(train_rows["labels"])),
        "loss_reduction": loss_args.loss_reduction,
        "rdrop_alpha": techniques.rdrop_alpha,
        "layerwise_lr_decay": techniques.layerwise_lr_decay,
        "adversary": None
        if techniques.adversarial == "none"
        else Adversary(techniques.adversarial, techniques.adversarial_epsilon),
    }


def _make_compute_metrics(rule: DecisionRule):
    """The Trainer's validation metric: one model's decisions by `rule` (a run's fixed rule), scored."""

    def compute_metrics(prediction: EvalPrediction) -> dict:
        decisions = rule.decide(sigmoid(prediction.predictions))
        result = score(prediction.label_ids > 0.5, decisions)
        return {"micro_f1": result["micro_f1"], "macro_f1": result["macro_f1"]}

    return compute_metrics


def make_loss(loss_args: LossArguments, train_labels: np.ndarray) -> MultiLabelLoss:
    """The configured loss, element-wise (the Trainer reduces it), built by its registered `Loss` from the labels
    of the fold's training split only (`pos_weight: auto`), so the validation rows never shape the loss."""
    common = {"reduction": "none", "label_smoothing": loss_args.label_smoothing}
    return loss_named(loss_args.loss).build(loss_args, train_labels, **common)
