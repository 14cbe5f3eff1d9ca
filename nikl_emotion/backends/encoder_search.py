"""The encoder backend's hyper-parameter trials (`abilities.SearchTrials`, `train.py --hp-search`): the Trainer's
and the loss's keys drawn around the config's own values, and a trial scored by an `EmotionTrainer` on one fold's
split, as the fold itself would train (same rows, loss, techniques and early stopping), keeping nothing.

| key | range |
|---|---|
| learning_rate | log-uniform in [lr/10, lr*10] |
| weight_decay | uniform in [0, 0.3] |
| per_device_train_batch_size | one of 16, 32, 64, 128 |
| num_train_epochs | integer in [max(1, E/2), E] (E: the config's epochs) |
| warmup_steps | ratio in [0, 0.2] |
| label_smoothing | uniform in [0, 0.2] |
| the loss's own keys | its `Loss.suggest` (losses.py): bce: pos_weight none/auto; focal: focal_gamma [0, 4], |
| | focal_alpha [0.1, 0.9]; asl: asl_gamma_neg [0, 6], asl_clip [0, 0.2]; a registered loss: its keys' ranges |
"""

from __future__ import annotations

import dataclasses
import math

from transformers import EvalPrediction, TrainerCallback, set_seed

from nikl_emotion.backends.emotion_trainer import EmotionTrainer, fold_trainer_inputs
from nikl_emotion.backends.engines import free_engine
from nikl_emotion.backends.fold_backend import FoldBackend, FoldData, PreparedRun, SearchTrials, TrialFold
from nikl_emotion.backends.losses import loss_named
from nikl_emotion.base.config import RunSettings
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.metrics import score as metric_score
from nikl_emotion.decisions.metrics import sigmoid

__all__ = [
    "BATCH_SIZES",
    "EncoderSearchTrials",
]

BATCH_SIZES = (16, 32, 64, 128)


class _BestEpoch(TrainerCallback):
    """A trial is worth its best evaluation (what `load_best_model_at_end` would keep), not its last: the decisions
    of the best one, kept as the metric computes them."""

    def __init__(self, rule):
        self.rule, self.best, self.best_fold, self._last = rule, -math.inf, None, None

    def compute_metrics(self, prediction: EvalPrediction) -> dict:
        gold, decided = prediction.label_ids > 0.5, self.rule.decide(sigmoid(prediction.predictions))
        self._last = TrialFold(gold, decided)
        result = metric_score(gold, decided)
        return {"micro_f1": result["micro_f1"], "macro_f1": result["macro_f1"]}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and metrics.get("eval_micro_f1", -math.inf) > self.best:
            self.best, self.best_fold = metrics["eval_micro_f1"], self._last


class EncoderSearchTrials(SearchTrials):
    """Trials of an `EncoderBackend` (or a subclass: its `new_model` builds each trial's classifier)."""

    def __init__(self, backend: FoldBackend):
        self.backend = backend

    def suggest(self, trial, settings: RunSettings) -> dict:
        training = settings.training
        lr, epochs = training.learning_rate, max(1, int(math.ceil(training.num_train_epochs)))
        values = {
            "learning_rate": trial.suggest_float("learning_rate", lr / 10, lr * 10, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.3),
            "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", list(BATCH_SIZES)),
            "num_train_epochs": trial.suggest_int("num_train_epochs", max(1, epochs // 2), epochs),
            "warmup_steps": trial.suggest_float("warmup_steps", 0.0, 0.2),  # < 1: a share of the steps
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        }
        return {**values, **loss_named(settings.loss.loss).suggest(trial)}

    def score(self, settings: RunSettings, prepared: PreparedRun, data: FoldData, output_dir: str) -> TrialFold:
        # trials are scored, not kept: no checkpoints, no best-model reload, nothing pushed to the hub
        args = dataclasses.replace(
            settings.training,
            output_dir=output_dir,
            save_strategy="no",
            load_best_model_at_end=False,
            remove_unused_columns=False,
            push_to_hub=False,
        )
        set_seed(args.seed)  # every trial starts from the same classifier weights, as each fold does
        model = self.backend.new_model(data.backbone, prepared.tokenizer, settings, data.preprocessing.classifier_head)
        best = _BestEpoch(fixed_rule(settings.decision))
        inputs = fold_trainer_inputs(data.train_rows, data.choosing_rows, prepared.tokenizer, settings)
        trainer = EmotionTrainer(model=model, args=args, **{**inputs, "compute_metrics": best.compute_metrics})
        trainer.add_callback(best)
        try:
            trainer.train()
            if best.best_fold is None:  # no evaluation while training (eval_strategy: no): one at the end
                best.on_evaluate(args, trainer.state, trainer.control, trainer.evaluate())
        finally:
            free_engine(trainer)
        return best.best_fold
