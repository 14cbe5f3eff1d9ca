"""Weight averaging for fine-tuning: an exponential moving average of the weights (`ema_decay`, Polyak & Juditsky
1992; the decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, as TensorFlow's and timm's EMA do, so
the first epochs are not dominated by the initial weights) and stochastic weight averaging (`swa_epochs`, Izmailov et
al. 2018: the uniform mean of the weights at the end of each of the last N epochs).

Whenever the Trainer evaluates or saves, the model holds the averaged weights (SWA's mean once its first epoch is
in, else the EMA, else the raw weights); the raw weights come back before the next optimizer step. So the
validation score, the best-checkpoint choice, `best/` and the predictions all use the averaged weights. With both on,
SWA averages the EMA at each epoch end.

A checkpoint holds the averaged weights as its model (what `load_best_model_at_end` loads) and, in
`weight_averaging.pt`, the raw weights and both averages, so an interrupted fold resumes exactly.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import TrainerCallback

from nikl_emotion.base.checkpoint_files import AVERAGING_STATE_FILE

__all__ = [
    "WeightAveraging",
    "weight_averaging",
]


logger = logging.getLogger(__name__)


class WeightAveraging(TrainerCallback):
    """EMA and/or SWA of a model's trainable parameters, swapped in for evaluation and saving (module docstring)."""

    def __init__(self, ema_decay: float = 0.0, swa_epochs: int = 0):
        if not (0 <= ema_decay < 1) or swa_epochs < 0 or (ema_decay == 0 and swa_epochs == 0):
            raise ValueError("WeightAveraging needs 0 < ema_decay < 1 and/or swa_epochs > 0")
        self.ema_decay = ema_decay
        self.swa_epochs = swa_epochs
        self.ema: dict[str, torch.Tensor] | None = None
        self.ema_updates = 0
        self.swa: dict[str, torch.Tensor] | None = None
        self.swa_count = 0
        self.raw: dict[str, torch.Tensor] | None = None  # the training weights while the average is swapped in

    # --- the averages ---

    @staticmethod
    def parameters(model: nn.Module) -> dict[str, nn.Parameter]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update_ema(self, model: nn.Module) -> None:
        params = self.parameters(model)
        if self.ema is None:
            self.ema = {name: p.detach().clone() for name, p in params.items()}
        decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for name, p in params.items():
            self.ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)
        self.ema_updates += 1

    @torch.no_grad()
    def update_swa(self, model: nn.Module) -> None:
        current = self.ema if self.ema is not None else {n: p.detach() for n, p in self.parameters(model).items()}
        if self.swa is None:
            self.swa = {name: value.clone() for name, value in current.items()}
        else:
            for name, value in current.items():
                self.swa[name].mul_(self.swa_count / (self.swa_count + 1)).add_(value, alpha=1 / (self.swa_count + 1))
        self.swa_count += 1

    def averaged(self) -> dict[str, torch.Tensor] | None:
        """The weights to evaluate and save, or None while there is no average yet."""
        return self.swa if self.swa is not None else self.ema

    @torch.no_grad()
    def swap_in(self, model: nn.Module) -> None:
        average = self.averaged()
        if average is None or self.raw is not None:
            return
        params = self.parameters(model)
        self.raw = {name: p.detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(average[name])

    @torch.no_grad()
    def swap_out(self, model: nn.Module) -> None:
        if self.raw is None:
            return
        for name, p in self.parameters(model).items():
            p.copy_(self.raw[name])
        self.raw = None

    def in_swa_window(self, state) -> bool:
        epochs = state.num_train_epochs or 0
        # the last `swa_epochs` epochs: epoch e (ending at state.epoch == e) with e > epochs - swa_epochs
        return self.swa_epochs > 0 and round(state.epoch or 0) > epochs - self.swa_epochs

    # --- Trainer events ---

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema, self.ema_updates, self.swa, self.swa_count, self.raw = (
            None,
            0,
            None,
            0,
            None,
        )  # a new trial starts afresh
        if state.global_step > 0:  # resuming: the checkpoint's model holds the average; raw weights are in the file
            self.load(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.swap_out(model)  # evaluation or saving is over: train the raw weights

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.ema_decay:
            self.update_ema(model)
        if control.should_evaluate or control.should_save:
            self.swap_in(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.swap_out(model)
        if self.in_swa_window(state):
            self.update_swa(model)
        if control.should_evaluate or control.should_save:
            self.swap_in(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.swa_epochs and self.swa_count == 0 and state.is_world_process_zero:
            logger.warning(
                f"swa_epochs: training stopped at epoch {state.epoch:g} (early stopping), before the "
                f"window of the last {self.swa_epochs} of {args.num_train_epochs:g} epochs began: no "
                "weights were averaged (the best checkpoint is kept); lower swa_epochs or raise "
                "early_stopping_patience"
            )
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.raw = None  # the model now holds the best checkpoint's (averaged) weights
        else:
            self.swap_in(model)  # the run ends with the averaged weights
            self.raw = None

    # --- checkpoints ---

    def save(self, checkpoint: str, model: nn.Module) -> None:
        raw = self.raw if self.raw is not None else {n: p.detach() for n, p in self.parameters(model).items()}
        state = {
            "raw": raw,
            "ema": self.ema,
            "ema_updates": self.ema_updates,
            "swa": self.swa,
            "swa_count": self.swa_count,
        }
        partial = os.path.join(checkpoint, AVERAGING_STATE_FILE + ".partial")
        torch.save(state, partial)
        os.replace(partial, os.path.join(checkpoint, AVERAGING_STATE_FILE))

    @torch.no_grad()
    def load(self, checkpoint: str, model: nn.Module) -> None:
        path = os.path.join(checkpoint, AVERAGING_STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint}: no {AVERAGING_STATE_FILE}; cannot resume the weight averages")
        state = torch.load(path, map_location="cpu", weights_only=True)
        params = self.parameters(model)
        device = next(iter(params.values())).device
        moved = lambda tensors: None if tensors is None else {k: v.to(device) for k, v in tensors.items()}  # noqa: E731
        self.ema, self.ema_updates = moved(state["ema"]), int(state["ema_updates"])
        self.swa, self.swa_count = moved(state["swa"]), int(state["swa_count"])
        for name, p in params.items():
            p.copy_(state["raw"][name])
        self.raw = None


def weight_averaging(ema_decay: float, swa_epochs: int) -> WeightAveraging | None:
    """The callback for these keys, or None when both are off."""
    if not ema_decay and not swa_epochs:
        return None
    return WeightAveraging(ema_decay, swa_epochs)
