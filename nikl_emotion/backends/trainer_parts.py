"""What every Trainer of the pipeline shares (a fold's `EmotionTrainer`, the post-trainer's): length-grouped
batches from a plain list of lengths, TensorBoard logs kept out of the checkpoints folder, and the seconds an optimizer
step takes on this machine (post-training's time budget, the recipe's plan of a fold)."""

from __future__ import annotations

import contextlib
import itertools
import time

import torch
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from nikl_emotion.text.batching import column_array

__all__ = [
    "keep_tensorboard_logs",
    "LengthListSamplerMixin",
    "measure_step_seconds",
]

_CALIBRATION_STEPS = 12  # measured steps, after
_CALIBRATION_WARMUP = 3  # unmeasured ones (the first batch is the longest; allocator and thread-pool warm-up)


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


def measure_step_seconds(trainer, steps: int = _CALIBRATION_STEPS, warmup: int = _CALIBRATION_WARMUP) -> float:
    """Seconds per optimizer step of `trainer`'s model on its own training batches, spread over an epoch (the
    slowest process's, under `accelerate launch`), measured as the Trainer runs one: `gradient_accumulation_steps`
    micro-batches, each its trainer's own `compute_loss` (a fold's loss function, R-Drop's second pass) under the
    accelerator's autocast (bf16/fp16 when set) through the model as the Trainer wraps it (DDP with several
    processes, gradients synchronised on the last micro-batch only), then the optimizer. The optimizer runs with
    learning rate 0 and no weight decay: the step costs what a real one does and changes no weight."""
    model, accelerator = trainer.model, trainer.accelerator
    model.train()
    wrapped = accelerator.prepare_model(model) if accelerator.num_processes > 1 else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)
    accumulation = max(1, trainer.args.gradient_accumulation_steps)
    batches = iter(_spread(trainer.get_train_dataloader(), (warmup + steps) * accumulation))
    marks = []
    for step in range(warmup + steps):
        for micro in range(accumulation):
            batch = trainer._prepare_inputs(next(batches))
            sync = micro == accumulation - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(wrapped), accelerator.autocast():
                loss = trainer.compute_loss(wrapped, batch) / accumulation
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= warmup - 1:
            marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    seconds = (marks[-1] - marks[0]) / (len(marks) - 1)
    gathered = accelerator.gather(torch.tensor([seconds], device=accelerator.device))
    return float(gathered.max())


def _spread(loader, count: int) -> list:
    """`count` of the loader's batches spread evenly over one epoch (cycling when it has fewer): the epoch's mix of
    lengths. A length-grouped loader's first batches hold its longest rows (it puts them first, so that a lack of
    memory shows at once): its first steps cost more than an epoch's mean step."""
    total = len(loader)
    if total == 0:
        raise ValueError("no training batches to measure a step on")
    wanted = [round(i * total / count) % total for i in range(count)] if count <= total else None
    if wanted is None:
        return [batch for _, batch in zip(range(count), itertools.cycle(loader))]
    picked, positions = {}, set(wanted)
    for position, batch in enumerate(loader):
        if position in positions:
            picked[position] = batch
        if len(picked) == len(positions):
            break
    return [picked[position] for position in wanted]
