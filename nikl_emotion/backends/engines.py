"""The engine a run trains under, in one place: plain DDP, DeepSpeed (ZeRO stage 2 or 3) or FSDP, chosen by the
training settings (`deepspeed: FILE`, `fsdp`) or by `accelerate launch`'s config (its environment). What the
K-fold loop needs to know of it: which stages and techniques it refuses before any work, whether the weights are
split across the processes (every forward pass is then a collective, and `best/` is saved from weights gathered by
every rank), and how a fold's engine is let go before the next fold's.

Run here on 2 CPU processes (gloo) and tested (`tests/test_engines.py`): DeepSpeed ZeRO-2 and ZeRO-3. FSDP is
refused before any work: accelerate applies it on GPUs only (docs/models.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import json
import os
from dataclasses import dataclass

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "Engine",
    "engine_of",
    "check_engine",
    "check_post_training_engine",
    "gathered_state_dict",
    "free_engine",
    "release_memory",
    "open_waiting_group",
    "wait_for_the_main_process",
    "whole_models",
]

_SHARDED_INSTEAD = (
    "for weights split across the GPUs use DeepSpeed ZeRO-3 (configs/accelerate-deepspeed-zero3.yaml), for optimizer "
    "states and gradients alone ZeRO-2 (configs/accelerate-deepspeed-zero2.yaml), or LoRA/QLoRA (lora_r, load_in_4bit)"
)
# measured on 2 CPU processes (accelerate 1.15): its state makes a run FSDP only on GPU-like devices; CPU processes
# silently train plain DDP, so the fold loop's FSDP path (sharded predictions, the gathered best/) cannot run here
_FSDP_UNTESTED = (
    "accelerate applies FSDP on GPUs only, and on CPU processes trains plain DDP instead, so the K-fold loop under "
    "FSDP has never run and is not offered"
)


@dataclass(frozen=True)
class Engine:
    """`name`: ddp (one process or several, no sharding engine), deepspeed or fsdp; `zero_stage` for DeepSpeed;
    `half`: the engine holds the weights themselves in bf16/fp16 (DeepSpeed's mixed precision), not autocast."""

    name: str = "ddp"
    zero_stage: int | None = None
    half: str | None = None

    @property
    def label(self) -> str:
        return f"DeepSpeed ZeRO-{self.zero_stage}" if self.name == "deepspeed" else self.name.upper()


def engine_of(training_args=None) -> Engine:
    """The engine the settings (None: the launcher's environment alone) ask for, read before any engine starts."""
    env = os.environ
    if (training_args is not None and training_args.fsdp) or _true(env.get("ACCELERATE_USE_FSDP")):
        return Engine("fsdp")
    deepspeed = training_args.deepspeed if training_args is not None else None
    if not deepspeed and not _true(env.get("ACCELERATE_USE_DEEPSPEED")):
        return Engine()
    stage = _zero_stage(deepspeed or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"))
    if stage is None:
        stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 2)
    # TrainingArguments' mixed precision is the launcher's, overridden by bf16/fp16
    half = training_args.mixed_precision if training_args is not None else env.get("ACCELERATE_MIXED_PRECISION")
    return Engine("deepspeed", stage, half if half in ("bf16", "fp16") else None)


def check_engine(engine: Engine, technique_args=None, lora_r: int = 0) -> None:
    """Refuse, before any work, what the engine cannot run (`technique_args` and `lora_r` checked when given): FSDP,
    which accelerate applies on GPUs only (docs/models.md); under DeepSpeed, FGM/AWP, which perturb the embeddings
    by their gradient after `backward` (the engine has already reduced, stepped and cleared it), and an EMA or SWA of
    weights the engine holds in half precision (a 0.001 update rounds away) or in shards (ZeRO-3); LoRA under ZeRO-3
    (the adapter is saved from the shard each process holds) or under DeepSpeed's half precision (it casts the
    adapter and head too)."""
    if engine.name == "fsdp":
        raise PipelineError(f"fsdp: {_FSDP_UNTESTED}; {_SHARDED_INSTEAD}")
    if engine.name != "deepspeed" or technique_args is None:
        return
    if technique_args.adversarial != "none":
        raise PipelineError(
            f"adversarial: {technique_args.adversarial} perturbs the embeddings by their gradient after backward, "
            f"which {engine.label} has already reduced and cleared; drop it or train without DeepSpeed (DDP)"
        )
    held = engine.half if engine.half else "shards" if engine.zero_stage == 3 else None
    if held and (technique_args.ema_decay or technique_args.swa_epochs):
        raise PipelineError(
            f"ema_decay/swa_epochs: {engine.label} holds the weights in {held}, which an average of them cannot "
            f"follow; drop the averaging{f' or {engine.half}' if engine.half else ''}"
        )
    if lora_r and engine.zero_stage == 3:
        raise PipelineError(
            "lora_r: under DeepSpeed ZeRO-3 each process holds a shard of the adapter; train LoRA under ZeRO-2 "
            "(configs/accelerate-deepspeed-zero2.yaml) or DDP, where the base is frozen and small anyway"
        )
    if lora_r and engine.half:
        raise PipelineError(
            f"lora_r: under DeepSpeed with {engine.half} the engine casts the adapter and its head to {engine.half} "
            f"too, which this pipeline trains and serves in float32 over a half base; train LoRA with {engine.half} "
            "under DDP (accelerate launch without a DeepSpeed config), or under DeepSpeed without it"
        )


def check_post_training_engine(engine: Engine) -> None:
    """post_train.py under DeepSpeed, refused before any work. Measured on 2 CPU processes: under ZeRO-2 its held-out
    loss before training is an evaluation before the engine exists, which DeepSpeed runs only under ZeRO-3; under
    ZeRO-3 the masked-LM model is built partitioned where its head is copied from the backbone."""
    if engine.name == "deepspeed":
        raise PipelineError(
            f"post-training under {engine.label} is not offered (its held-out evaluation before training and its "
            "model building have not run under DeepSpeed); post-train under DDP (accelerate launch --multi_gpu) or "
            "one process: its models are encoders that fit one GPU"
        )


def gathered_state_dict(trainer) -> dict | None:
    """The whole model's weights where an engine splits them across the processes (every rank must call this:
    gathering is a collective); None where each process holds them whole (save the model as it is)."""
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    sharded = accelerator.distributed_type == DistributedType.FSDP or (plugin is not None and plugin.zero_stage == 3)
    return accelerator.get_state_dict(trainer.model_wrapped) if sharded else None


def free_engine(trainer) -> None:
    """Let go of the fold's engine before the next fold's: the accelerator keeps the prepared model, optimizer and
    DeepSpeed engine (its hooks and optimizer state) until told, so each fold's would stay in memory. What
    `Accelerator.free_memory` drops, without its garbage collection: the fold loop collects once, after the Trainer
    is gone (`release_memory`)."""
    accelerator = trainer.accelerator
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
    if wrapped is not None:
        wrapped.engine.destroy()  # its hooks on the module and its process groups' buffers
        accelerator.deepspeed_engine_wrapped = None
    accelerator._schedulers, accelerator._optimizers, accelerator._models, accelerator._dataloaders = [], [], [], []
    trainer.model_wrapped = trainer.model
    trainer.optimizer = trainer.lr_scheduler = None
    if hasattr(trainer, "deepspeed"):
        trainer.deepspeed = None


def release_memory() -> None:
    """Between folds (the K-fold loop, before the next fold, not after the last: the summary follows at once):
    collect the last fold's objects and hand freed heap back to the OS. Without `malloc_trim`, glibc keeps the freed
    pages of one fold's tensors in its arenas and the process grows by ~100 MB a fold before levelling."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


# how long the other processes wait while the main process alone saves and pushes a fold: a 13B checkpoint's upload
# outlasts the 30 minutes of ddp_timeout, after which a waiting rank's barrier raises and the job dies
_MAIN_PROCESS_WORK = datetime.timedelta(hours=12)
_waiting_group = None  # per process: a gloo group of every process whose collectives wait _MAIN_PROCESS_WORK


def open_waiting_group(accelerator) -> None:
    """Make the waiting group, once per process, at a point every process reaches together (making a group is a
    rendezvous of its own). Gloo, so it waits on the CPU whatever the run's backend (NCCL's watchdog would abort a
    long wait); nothing else of the run uses it. A dead main process ends the wait at once: its socket closes."""
    global _waiting_group
    if _waiting_group is None and accelerator.num_processes > 1:
        import torch.distributed as dist

        _waiting_group = dist.new_group(backend="gloo", timeout=_MAIN_PROCESS_WORK)


def wait_for_the_main_process(accelerator) -> None:
    """Every process waits here for the main process's solo work (saving `best/`, pushing it) for up to
    _MAIN_PROCESS_WORK, not the run's collective timeout."""
    if accelerator.num_processes == 1:
        return
    if _waiting_group is None:
        raise RuntimeError("open_waiting_group must run first, where every process meets")
    import torch.distributed as dist

    dist.barrier(group=_waiting_group)


@contextlib.contextmanager
def whole_models():
    """Models built inside are whole, not partitioned by ZeRO-3 (which transformers does to every model built while
    a stage-3 config is registered, as a collective of all processes): for what one process builds alone, such as
    the offline backbone the main process builds and saves for every rank to load."""
    from transformers.integrations import deepspeed as hf_deepspeed

    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def _true(value: str | None) -> bool:
    return (value or "false").lower() in ("true", "1")


def _zero_stage(config) -> int | None:
    """The ZeRO stage a DeepSpeed config (a JSON path or a mapping) asks for; None without one."""
    if not config:
        return None
    if isinstance(config, str):
        try:
            with open(config, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"deepspeed: cannot read {config}: {exc}") from None
    stage = (config.get("zero_optimization") or {}).get("stage", 0) if isinstance(config, dict) else 0
    return int(stage) if str(stage).isdigit() else None
