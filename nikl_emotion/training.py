"""K-fold training with the Hugging Face Trainer: per fold the best checkpoint, validation and test probabilities;
then out-of-fold scores, a summary and a hard-voted submission."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
from dataclasses import dataclass
import gc
import hashlib
import os
import shutil

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from transformers.integrations import TensorBoardCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainingArguments, set_seed

from nikl_emotion.batching import MODEL_INPUTS, PaddingCollator, column_array, length_order
from nikl_emotion.backbone import build_offline_backbone, check_max_seq_length, load_model, load_tokenizer
from nikl_emotion.classifier import EmotionClassifier
from nikl_emotion.averaging import STATE_FILE as AVERAGING_FILE, WeightAveraging, weight_averaging
from nikl_emotion.config import (
    ARGUMENT_CLASSES, DataArguments, KFoldArguments, LossArguments, ModelArguments, TechniqueArguments, field_defaults,
    resolved_config,
)
from nikl_emotion.errors import PipelineError
from nikl_emotion.data import iter_column, load_jsonl
from nikl_emotion.fileio import write_json_atomic, write_probs
from nikl_emotion.divergence import DivergenceGuard, TrainingDiverged, check_finite_probabilities, likely_cause
from nikl_emotion.folder_kind import check_output_folder, holds_nothing, mark_folder
from nikl_emotion.folds import make_folds
from nikl_emotion.locking import exclusive, exclusive_all
from nikl_emotion.losses import MultiLabelLoss, build_loss
from nikl_emotion.metrics import decide, format_table, score, sigmoid
from nikl_emotion.model_card import write_model_card
from nikl_emotion.ngram import train_ngram
from nikl_emotion.vocabulary import is_ngram, is_offline
from nikl_emotion.preprocessing import Preprocessing, clean, encode, warn_if_preprocessing_differs, load_task_files
from nikl_emotion.pseudo_labels import PseudoLabels, fold_pseudo_labels, teacher_test_file
from nikl_emotion.run_folder import (
    DONE_FILE,
    FoldFolder,
    RunFolder,
    input_digests,
    last_complete_checkpoint,
    prepare_output_dir,
    read_mapping,
)
from nikl_emotion.summary import summarize
from nikl_emotion.decision import describe_choice, fixed_rule
from nikl_emotion.thresholds import describe_gain
from nikl_emotion.techniques import Adversary, enable_multi_sample_dropout, layerwise_parameter_groups, rdrop_divergence, repeat_batch

MODEL_INPUT_COLUMNS = (*MODEL_INPUTS, "length")  # `length` feeds the sampler only
TRAINER_COLUMNS = (*MODEL_INPUT_COLUMNS, "labels")


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
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in getattr(train_dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=column_array(train_dataset, "length").tolist(),
        )


class EmotionTrainer(LengthListSamplerMixin, Trainer):
    """Trainer whose loss comes from `losses.py`, reduced here so that gradient accumulation and multi-process runs
    give the same gradients as one big batch.

    `loss_fn` must return the element-wise (N, C) loss (`reduction="none"`); `loss_reduction` is "mean" (over all
    label elements of the optimizer step's batch) or "sum". The techniques of techniques.py that act inside a step
    come in as `rdrop_alpha`, `layerwise_lr_decay` and `adversary`.
    """

    def __init__(self, *args, loss_fn: MultiLabelLoss, loss_reduction: str = "mean", rdrop_alpha: float = 0.0,
                 layerwise_lr_decay: float = 1.0, adversary: Adversary | None = None, **kwargs):
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
        groups = layerwise_parameter_groups(opt_model, self.args.learning_rate, self.layerwise_lr_decay,
                                            self.args.weight_decay, self.get_decay_parameter_names(opt_model))
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
            elementwise = (0.5 * (self.loss_fn(first, labels.float()) + self.loss_fn(second, labels.float()))
                           + self.rdrop_alpha * rdrop_divergence(first, second))
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
    classifier = EmotionClassifier.from_model(trainer.model, trainer.processing_class, preprocessing, trainer.args.device)
    state = trainer.accelerator.state
    logits = classifier.predict_logits(rows, batch_size=trainer.args.per_device_eval_batch_size,
                                       part=state.process_index, parts=state.num_processes)
    if state.num_processes > 1:
        logits = trainer.accelerator.reduce(torch.from_numpy(logits).to(trainer.args.device), "sum").cpu().numpy()
    return sigmoid(logits)


def fold_trainer_inputs(
    train_rows: Dataset, val_rows: Dataset, tokenizer, kfold_args: KFoldArguments, loss_args: LossArguments,
    technique_args: TechniqueArguments | None = None,
) -> dict:
    """EmotionTrainer's data, collator, metric, early stopping, loss and techniques for one fold (train_fold and the
    HP search)."""
    columns = [c for c in TRAINER_COLUMNS if c in train_rows.column_names]
    techniques = technique_args or TechniqueArguments()
    callbacks = [EarlyStoppingCallback(kfold_args.early_stopping_patience)] if kfold_args.early_stopping_patience else []
    averaging = weight_averaging(techniques.ema_decay, techniques.swa_epochs)
    if averaging is not None:
        callbacks.append(averaging)
    return {
        "train_dataset": train_rows.select_columns(columns),
        "eval_dataset": val_rows.select(length_order(val_rows)).select_columns(columns),
        "processing_class": tokenizer,
        "data_collator": PaddingCollator(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        "compute_metrics": make_compute_metrics(kfold_args.threshold, kfold_args.fallback_top_label),
        "callbacks": callbacks,
        "loss_fn": make_loss(loss_args, np.asarray(train_rows["labels"])),
        "loss_reduction": loss_args.loss_reduction,
        "rdrop_alpha": techniques.rdrop_alpha,
        "layerwise_lr_decay": techniques.layerwise_lr_decay,
        "adversary": None if techniques.adversarial == "none" else Adversary(techniques.adversarial, techniques.adversarial_epsilon),
    }


def load_classifier(backbone: str, tokenizer, technique_args: TechniqueArguments | None = None):
    """A fresh classifier from the backbone, with the techniques that change its forward pass (multi-sample dropout)."""
    model = load_model(backbone, tokenizer)
    if technique_args is not None:
        enable_multi_sample_dropout(model, technique_args.multi_sample_dropout)
    return model


def backbone_and_encodings(
    model_args: ModelArguments, preprocessing: Preprocessing, training_args: TrainingArguments, cleaned: Dataset,
    cleaned_test: Dataset | None = None, other_texts: list[str] | tuple = (),
):
    """(backbone path, tokenizer, encoded rows, encoded test rows or None); the main process fills the cache first.
    An offline backbone's tokenizer learns the training, test and `other_texts` (what else the run encodes)."""
    train_texts = list(cleaned["text"])
    texts = train_texts + (list(cleaned_test["text"]) if cleaned_test is not None else []) + list(other_texts)
    backbone = prepare_backbone(model_args, texts, training_args.output_dir, training_args.seed, len(train_texts))
    if training_args.process_index == 0:
        warn_if_preprocessing_differs(backbone, preprocessing)
    with training_args.main_process_first(desc="tokenizing"):
        tokenizer = load_tokenizer(backbone, with_markers=preprocessing.input_format == "marker")
        check_max_seq_length(preprocessing.max_seq_length, backbone, tokenizer)
        limit = model_args.max_unknown_rate
        encoded = encode(cleaned, tokenizer, preprocessing, max_unknown_rate=limit)
        encoded_test = encode(cleaned_test, tokenizer, preprocessing, max_unknown_rate=limit) if cleaned_test is not None else None
    return backbone, tokenizer, encoded, encoded_test


def make_compute_metrics(threshold: float, fallback: bool):
    def compute_metrics(prediction: EvalPrediction) -> dict:
        decisions = decide(sigmoid(prediction.predictions), threshold, fallback)
        result = score(prediction.label_ids > 0.5, decisions)
        return {"micro_f1": result["micro_f1"], "macro_f1": result["macro_f1"]}

    return compute_metrics


def make_loss(loss_args: LossArguments, train_labels: np.ndarray) -> MultiLabelLoss:
    """The configured loss, element-wise (the Trainer reduces it); `pos_weight: auto` is computed from the labels of
    the fold's training split only, so the validation rows never shape the loss."""
    common = {"reduction": "none", "label_smoothing": loss_args.label_smoothing}
    if loss_args.loss == "bce":
        pos_weight = loss_args.parsed_pos_weight()
        if pos_weight == "auto":
            positives = np.asarray(train_labels).sum(axis=0)
            negatives = len(train_labels) - positives
            pos_weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).tolist()
        return build_loss("bce", pos_weight=pos_weight, **common)
    if loss_args.loss == "focal":
        return build_loss("focal", alpha=loss_args.focal_alpha, gamma=loss_args.focal_gamma, **common)
    return build_loss(
        "asl", gamma_neg=loss_args.asl_gamma_neg, gamma_pos=loss_args.asl_gamma_pos, clip=loss_args.asl_clip,
        eps=loss_args.asl_eps, disable_torch_grad_focal_loss=loss_args.asl_disable_torch_grad_focal_loss, **common,
    )


def prepare_backbone(model_args: ModelArguments, texts: list[str], output_dir: str, seed: int,
                     train_text_count: int | None = None) -> str:
    """The path to load the backbone from. An offline backbone is built once per run, its tokenizer from every text
    the run will encode (training, test and other files' texts; labels unused), each character given a token. A
    backbone built before test texts were included (its spec digests the first `train_text_count` texts only, the
    training texts) is kept, so an older run resumes with the vocabulary its folds were trained with."""
    if not is_offline(model_args.model_name_or_path):
        return model_args.model_name_or_path
    path = RunFolder(output_dir).backbone

    def spec_of(some_texts: list[str], **more) -> dict:
        digest = hashlib.sha256("\n".join(some_texts).encode("utf-8")).hexdigest()  # other data -> other vocabulary
        return {"model_name_or_path": model_args.model_name_or_path, "vocab_size": model_args.offline_vocab_size,
                "seed": seed, "texts_sha256": digest, **more}

    spec = spec_of(texts, alphabet="complete")
    marker = RunFolder(output_dir).backbone_spec
    state = PartialState()
    with state.main_process_first():
        existing = read_mapping(marker)
        legacy = spec_of(texts[:train_text_count]) if train_text_count is not None else None
        if existing not in (spec, legacy) and state.is_main_process:
            shutil.rmtree(path, ignore_errors=True)
            build_offline_backbone(texts, path, model_args.model_name_or_path, model_args.offline_vocab_size, seed)
            write_json_atomic(marker, spec)
    return path


@dataclass
class FoldData:
    """One fold's inputs: its training and validation rows (indices into `encoded`), the encoded test rows, the
    backbone to start from and how text was prepared."""

    fold: int
    train_index: np.ndarray
    val_index: np.ndarray
    encoded: Dataset
    encoded_test: Dataset | None
    backbone: str
    preprocessing: Preprocessing
    extra_train_rows: Dataset | None = None  # pseudo-labelled rows, training only (pseudo_labels.py)

    @property
    def train_rows(self) -> Dataset:
        rows = self.encoded.select(self.train_index)
        if self.extra_train_rows is None or len(self.extra_train_rows) == 0:
            return rows
        return concatenate_datasets([rows, self.extra_train_rows.select_columns(rows.column_names).cast(rows.features)])

    @property
    def val_rows(self) -> Dataset:
        return self.encoded.select(self.val_index)


def train_fold(data: FoldData, kfold_args: KFoldArguments, loss_args: LossArguments, training_args: TrainingArguments,
               technique_args: TechniqueArguments | None = None, folder: FoldFolder | None = None) -> dict:
    """Train one fold (resuming an interrupted one), predict its validation and test rows in order, and write its
    files, `done.json` last, into `folder` (default: the run's fold_K). Every rank calls this; the main process
    writes."""
    if is_ngram(data.backbone):
        return train_ngram_fold(data, kfold_args, training_args)
    folder = folder or RunFolder(training_args.output_dir).fold(data.fold)
    set_seed(training_args.seed)
    val_rows = data.val_rows
    techniques = technique_args or TechniqueArguments()
    cause = likely_cause(training_args.learning_rate, techniques.adversarial, techniques.adversarial_epsilon)
    trainer = fold_trainer(data, kfold_args, loss_args, training_args, technique_args, folder)
    guard = DivergenceGuard(data.fold, cause)
    trainer.add_callback(guard)
    try:
        train_resuming(trainer, folder, data.fold)
        guard.raise_if_diverged()
        val_probs = predict_in_order(trainer, data.preprocessing, val_rows)  # every rank predicts its share
        test_probs = predict_in_order(trainer, data.preprocessing, data.encoded_test) if data.encoded_test is not None else None
        check_finite_probabilities(data.fold, trainer.state.global_step, cause, validation=val_probs, test=test_probs)
    except TrainingDiverged:
        if trainer.is_world_process_zero():  # nothing of a diverged fold is worth resuming from
            shutil.rmtree(folder.checkpoints, ignore_errors=True)
        raise
    result: dict = {}
    if trainer.is_world_process_zero():
        gold = np.asarray(val_rows["labels"])
        result = score(gold, fixed_rule(kfold_args).decide(val_probs))
        save_best(trainer, folder, data.preprocessing, run_config(training_args.output_dir), data.fold, result)
        result.update(fold_state(trainer, data))
        write_fold_outputs(folder, val_rows, val_probs, data.encoded_test, test_probs, result)
    trainer.accelerator.wait_for_everyone()
    del trainer
    release_memory()
    return result


def train_ngram_fold(data: FoldData, kfold_args: KFoldArguments, training_args: TrainingArguments) -> dict:
    """The n-gram member's fold: fit on the fold's cleaned training rows, predict its validation and test rows, and
    write the same files as an encoder's fold (best/ holds the fitted model)."""
    folder = RunFolder(training_args.output_dir).fold(data.fold)
    model, seconds = train_ngram(data.train_rows, training_args.seed)
    val_rows = data.val_rows
    val_probs = model.predict_proba(val_rows)
    test_probs = model.predict_proba(data.encoded_test) if data.encoded_test is not None else None
    result = score(np.asarray(val_rows["labels"]), fixed_rule(kfold_args).decide(val_probs))
    shutil.rmtree(folder.best_staging, ignore_errors=True)
    model.save(folder.best_staging)
    data.preprocessing.save(folder.best_staging)
    shutil.rmtree(folder.best, ignore_errors=True)
    os.replace(folder.best_staging, folder.best)
    result.update({"fold": data.fold, "best_checkpoint": None, "best_metric": result["micro_f1"], "epochs_run": None,
                   "train_rows": int(len(data.train_index)), "train_seconds": round(seconds, 1),
                   "pseudo_label_rows": pseudo_label_rows(data)})
    write_fold_outputs(folder, val_rows, val_probs, data.encoded_test, test_probs, result)
    print(f"fold {data.fold}: n-gram model fitted on {len(data.train_index)} rows in {seconds:.1f} s; "
          f"validation micro-F1 {result['micro_f1']:.4f}")
    return result


def fold_trainer(data: FoldData, kfold_args: KFoldArguments, loss_args: LossArguments,
                 training_args: TrainingArguments, technique_args: TechniqueArguments | None = None,
                 folder: FoldFolder | None = None) -> EmotionTrainer:
    """The fold's EmotionTrainer: a fresh classifier from the backbone, checkpoints in the fold's folder."""
    folder = folder or RunFolder(training_args.output_dir).fold(data.fold)
    tokenizer = load_tokenizer(data.backbone, with_markers=data.preprocessing.input_format == "marker")
    model = load_classifier(data.backbone, tokenizer, technique_args)
    fold_args = dataclasses.replace(training_args, output_dir=folder.checkpoints, remove_unused_columns=False)
    trainer = EmotionTrainer(
        model=model, args=fold_args,
        **fold_trainer_inputs(data.train_rows, data.val_rows, tokenizer, kfold_args, loss_args, technique_args),
    )
    keep_tensorboard_logs(trainer, folder.runs)
    return trainer


def train_resuming(trainer: EmotionTrainer, folder: FoldFolder, fold: int) -> None:
    """Train, resuming from the last fully written checkpoint of an interrupted fold (a half-written one is
    pruned first, by the main process)."""
    # a run with weight averaging needs the raw weights too, written after the Trainer's files
    required = (AVERAGING_FILE,) if any(isinstance(c, WeightAveraging) for c in trainer.callback_handler.callbacks) else ()
    if trainer.is_world_process_zero():
        last_complete_checkpoint(folder.checkpoints, required)
    trainer.accelerator.wait_for_everyone()
    resume = last_complete_checkpoint(folder.checkpoints, required)
    if resume and trainer.is_world_process_zero():
        print(f"fold {fold}: resuming from {os.path.basename(resume)}")
    trainer.train(resume_from_checkpoint=resume)


def save_best(trainer: EmotionTrainer, folder: FoldFolder, preprocessing: Preprocessing, config: dict, fold: int,
              result: dict) -> None:
    """The best checkpoint with its preprocessing settings and model card, written beside and then renamed: a kill
    never leaves a half-written best/."""
    shutil.rmtree(folder.best_staging, ignore_errors=True)
    trainer.save_model(folder.best_staging)
    preprocessing.save(folder.best_staging)
    write_model_card(folder.best_staging, config, fold, result)
    shutil.rmtree(folder.best, ignore_errors=True)
    os.replace(folder.best_staging, folder.best)


def fold_state(trainer: EmotionTrainer, data: FoldData) -> dict:
    best = trainer.state.best_model_checkpoint
    return {"fold": data.fold, "best_checkpoint": best and os.path.basename(best), "best_metric": trainer.state.best_metric,
            "epochs_run": trainer.state.epoch, "train_rows": int(len(data.train_index)),
            "pseudo_label_rows": pseudo_label_rows(data)}


def pseudo_label_rows(data: FoldData) -> int:
    return 0 if data.extra_train_rows is None else len(data.extra_train_rows)


def write_fold_outputs(folder: FoldFolder, val_rows: Dataset, val_probs: np.ndarray, test_rows: Dataset | None,
                       test_probs: np.ndarray | None, result: dict) -> None:
    """Probability files and metrics, then `done.json` (the fold is complete only once it exists); the Trainer's
    checkpoints go (the best one is in best/)."""
    write_probs(folder.val_probs, iter_column(val_rows, "id"), val_probs)
    if test_probs is not None:
        write_probs(folder.test_probs, iter_column(test_rows, "id"), test_probs)
    write_json_atomic(folder.metrics, result)
    write_json_atomic(folder.done, {"fold": result["fold"]})
    shutil.rmtree(folder.checkpoints, ignore_errors=True)


def run_config(output_dir: str) -> dict:
    """The run's resolved configuration, as `prepare_output_dir` saved it ({} when train_fold runs on its own)."""
    return read_mapping(RunFolder(output_dir).config)


def release_memory() -> None:
    """Between folds: drop the fold's objects and hand freed heap back to the OS. Without `malloc_trim`, glibc keeps
    the freed pages of one fold's tensors in its arenas and the process grows by ~100 MB a fold before levelling."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def pseudo_label_datasets(technique_args: TechniqueArguments, sets: list[PseudoLabels] | None, preprocessing: Preprocessing,
                          tokenizer, training_args: TrainingArguments) -> list[Dataset] | None:
    """Per fold, the pseudo-labelled test rows of `pseudo_label_run` (`sets`: its fold K's confident predictions),
    cleaned and encoded like the training rows, labels attached; None when the key is unset."""
    if sets is None:
        return None
    run_dir = technique_args.pseudo_label_run
    with training_args.main_process_first(desc="pseudo-labelled rows"):
        pool = clean(load_jsonl(teacher_test_file(run_dir), "optional"), preprocessing)
        if tokenizer is not None:
            pool = encode(pool, tokenizer, preprocessing)
    position = {row_id: i for i, row_id in enumerate(iter_column(pool, "id"))}
    datasets = []
    for k, labelled in enumerate(sets):
        datasets.append(with_labels(pool, position, labelled))
        if training_args.process_index == 0:
            print(f"fold {k}: {len(labelled.ids)} pseudo-labelled rows from {run_dir} (every label's probability "
                  f">= {technique_args.pseudo_label_threshold:g} or <= {1 - technique_args.pseudo_label_threshold:g})")
    return datasets


def with_labels(pool: Dataset, position: dict[str, int], labelled: PseudoLabels) -> Dataset:
    """The rows of `pool` named by `labelled.ids`, their `labels` column set to the pseudo-labels."""
    missing = [row_id for row_id in labelled.ids if row_id not in position]
    if missing:
        raise PipelineError(f"pseudo_label_run: id {missing[0]!r} of its test predictions is not in its test file")
    return replace_labels(pool.select([position[row_id] for row_id in labelled.ids]), labelled.labels)


def replace_labels(rows: Dataset, labels: np.ndarray) -> Dataset:
    """`rows` with their `labels` column replaced (pseudo-labels, soft targets), same feature type."""
    feature = rows.features["labels"]
    return rows.remove_columns("labels").add_column("labels", np.asarray(labels, dtype=np.float32).tolist(), feature=feature)


def run_training(
    model_args: ModelArguments, data_args: DataArguments, kfold_args: KFoldArguments, loss_args: LossArguments,
    technique_args: TechniqueArguments, training_args: TrainingArguments,
) -> dict | None:
    """The whole K-fold job (or one fold with `fold`); returns the summary once every fold is done."""
    state = PartialState()
    output_dir = training_args.output_dir
    check_output_folder(output_dir, "run")  # before any work: another command's folder is refused, not touched
    files = load_task_files(data_args, training_args)
    preprocessing, train_rows, cleaned, cleaned_test = files.preprocessing, files.train, files.cleaned, files.cleaned_test
    if kfold_args.num_folds > len(train_rows):
        raise PipelineError(f"num_folds: {kfold_args.num_folds} folds need at least as many rows; "
                            f"{', '.join(data_args.train_files)} hold {len(train_rows)}")
    if is_ngram(model_args.model_name_or_path) and state.num_processes > 1:
        raise PipelineError(f"{model_args.model_name_or_path} fits on one process: run python train.py, not accelerate launch")
    folds = make_folds(np.asarray(train_rows["labels"]), kfold_args.num_folds, training_args.seed)
    pseudo_sets = None  # checked before anything is written: a run with other folds would leak validation labels
    if technique_args.pseudo_label_run is not None:
        pseudo_sets = fold_pseudo_labels(technique_args.pseudo_label_run, list(iter_column(train_rows, "id")), folds,
                                         technique_args.pseudo_label_threshold)
    selected = range(kfold_args.num_folds) if kfold_args.fold is None else [kfold_args.fold]
    run = RunFolder(output_dir)
    with contextlib.ExitStack() as held:
        if state.is_main_process:
            # this process's folds stay locked while it runs: a second copy of the run (or of the fold) is refused
            # at once, while `--fold 0` and `--fold 1` side by side share the folder
            held.enter_context(exclusive_all([(run.fold_lock(k), f"{output_dir} fold {k}") for k in selected]))
        # set-up (config, offline backbone) one process at a time; the other ranks of this job only meet barriers
        with exclusive(run.setup_lock, output_dir, wait=True) if state.is_main_process else contextlib.nullcontext():
            if state.is_main_process:
                inputs = input_digests([*data_args.train_files, *([data_args.test_file] if data_args.test_file else [])])
                config = resolved_config(model_args, data_args, kfold_args, loss_args, technique_args, training_args)
                prepare_output_dir(output_dir, config, kfold_args.overwrite, inputs=inputs,
                                   defaults=field_defaults(*ARGUMENT_CLASSES[:-1]))
            state.wait_for_everyone()
            if is_ngram(model_args.model_name_or_path):  # reads the cleaned text itself: no backbone, no tokens
                backbone, tokenizer, encoded, encoded_test = model_args.model_name_or_path, None, cleaned, cleaned_test
            else:
                backbone, tokenizer, encoded, encoded_test = backbone_and_encodings(model_args, preprocessing,
                                                                                    training_args, cleaned, cleaned_test)
            if state.is_main_process:  # from here on the folder holds this run's results (RunFolder.has_results)
                for k in selected:
                    mark_folder(run.fold(k).root, "fold")
        pseudo = pseudo_label_datasets(technique_args, pseudo_sets, preprocessing, tokenizer, training_args)
        fold_data = [FoldData(k, *folds[k], encoded, encoded_test, backbone, preprocessing, pseudo[k] if pseudo else None)
                     for k in selected]
        train_folds(run, fold_data, kfold_args, loss_args, training_args, technique_args)
        if not state.is_main_process:
            return None
        with exclusive(run.setup_lock, output_dir, wait=True):
            summary = summarize(output_dir, train_rows, data_args.test_file, kfold_args.num_folds, kfold_args)
    print_summary(summary, kfold_args, output_dir)
    return summary


def train_folds(run: RunFolder, fold_data: list[FoldData], kfold_args: KFoldArguments, loss_args: LossArguments,
                training_args: TrainingArguments, technique_args: TechniqueArguments) -> None:
    """Train the folds that are not done yet. A fold that diverges stops the run; its folder goes (and so do the
    selected folds' empty ones), so a corrected configuration may take the folder over when no results are left."""
    for data in fold_data:
        k = data.fold
        if run.fold(k).is_done(k):
            print(f"fold {k}: already complete ({DONE_FILE}); skipped")
            continue
        try:
            train_fold(data, kfold_args, loss_args, training_args, technique_args)
        except TrainingDiverged:
            if PartialState().is_main_process:
                for other in fold_data:
                    if other.fold == k or holds_nothing(run.fold(other.fold).root):
                        shutil.rmtree(run.fold(other.fold).root, ignore_errors=True)
            raise


def print_summary(summary: dict | None, kfold_args: KFoldArguments, output_dir: str) -> None:
    if summary is None:
        print(f"fold {kfold_args.fold} done; the run is summarised when all {kfold_args.num_folds} folds are in {output_dir}")
        return
    table = {f"fold_{f['fold']}": f for f in summary["folds"]}
    table["oof"] = summary["oof"]
    print(format_table(table))
    print(describe_gain(summary["thresholds"]))
    print(describe_choice(summary["decision"]))
