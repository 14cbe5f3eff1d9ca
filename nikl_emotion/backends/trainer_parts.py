"""What every Trainer of the pipeline shares (a fold's `EmotionTrainer`, the post-trainer's): length-grouped
batches from a plain list of lengths, and TensorBoard logs kept out of the checkpoints folder."""

from __future__ import annotations

from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from nikl_emotion.text.batching import column_array

__all__ = [
    "keep_tensorboard_logs",
    "LengthListSamplerMixin",
]


def keep_tensorboard_logs(trainer: Trainer, logging_dir: str) -> None:
    """TensorBoard logs into `logging_dir` instead of the checkpoints folder, which is deleted when the run ends
    (`TENSORBOARD_LOGGING_DIR`, when set, still wins)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = logging_dir


class LengthListSamplerMixin:
    """Feeds the length-grouped sampler a plain list of lengths. Trainer would hand it `dataset["length"]`, a lazy
    column in datasets 5 that reads one row per lookup: a quarter of a tiny model's epoch, three quarters of an
    MLM epoch."""

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in getattr(
            train_dataset, "column_names", ()
        ):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=column_array(train_dataset, "length").tolist(),
        )
