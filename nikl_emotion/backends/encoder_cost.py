"""The encoder backend's cost meter (`CostMeter`, the recipe's plan of fine-tuning): one fold's trainer built as
`train_fold` builds it, a few optimizer steps timed (`measure_step_seconds`: learning rate 0, nothing moves), an
evaluation timed on a slice of its choosing rows, and its weights saved once; then all of it is let go."""

from __future__ import annotations

import dataclasses
import os
import time

from nikl_emotion.backends.engines import free_engine
from nikl_emotion.backends.fold_backend import CostMeter, FoldBackend, FoldCost, FoldData
from nikl_emotion.backends.trainer_parts import measure_step_seconds
from nikl_emotion.base.config import RunSettings
from nikl_emotion.folders.run_folder import FoldFolder

__all__ = [
    "EncoderCostMeter",
    "CHECKPOINT_PER_WEIGHTS",
]

# a Trainer checkpoint holds the weights and AdamW's two moments: three times the bytes of the weights saved alone
CHECKPOINT_PER_WEIGHTS = 3
_TIMED_ROWS = 512  # rows evaluated to time a prediction, spread over the lengths (after the same rows once untimed)


class EncoderCostMeter(CostMeter):
    """The cost of an `EncoderBackend`'s fold (or a subclass's: its `fold_trainer` and `new_model` build it)."""

    def __init__(self, backend: FoldBackend):
        self.backend = backend

    def measure(self, settings: RunSettings, data: FoldData, scratch: str) -> FoldCost:
        began = time.perf_counter()
        trainer = self.backend.fold_trainer(settings, dataclasses.replace(data, ends_at=None), FoldFolder(scratch))
        built = time.perf_counter() - began
        try:
            step = measure_step_seconds(trainer)
            accumulation = max(1, trainer.args.gradient_accumulation_steps)
            steps_per_epoch = max(1, len(trainer.get_train_dataloader()) // accumulation)
            rows = _spread_rows(trainer.eval_dataset, _TIMED_ROWS)
            trainer.evaluate(eval_dataset=rows)
            began = time.perf_counter()
            trainer.evaluate(eval_dataset=rows)
            per_row = (time.perf_counter() - began) / max(len(rows), 1)
            began = time.perf_counter()
            trainer.save_model(os.path.join(scratch, "saved"))
            save = (time.perf_counter() - began) * CHECKPOINT_PER_WEIGHTS
        finally:
            free_engine(trainer)
        return FoldCost(step, steps_per_epoch, per_row, save, built)


def _spread_rows(rows, count: int):
    """`count` rows spread evenly over `rows` (the choosing rows, in length order): their mix of lengths."""
    total = len(rows)
    return rows.select(sorted({i * total // count for i in range(count)}) if total > count else range(total))
