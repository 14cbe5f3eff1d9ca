"""The encoder backend: a Hugging Face encoder (hub, local folder or an offline backbone built here) fine-tuned per
fold with `EmotionTrainer`. `prepare` builds or finds the backbone and tokenizes the run's rows; `train_fold`
trains one fold (resuming an interrupted one), predicts its rows with the same `EmotionClassifier` inference uses,
and saves `best/` (weights, tokenizer, preprocessing.json, model card) whole or not at all."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from transformers import TrainingArguments, set_seed

from nikl_emotion.backends.averaging import WeightAveraging
from nikl_emotion.backends.backbone import (
    build_offline_backbone,
    check_max_seq_length,
    check_model_folder,
    check_model_loading,
    load_model,
    load_tokenizer,
    parse_offline_spec,
)
from nikl_emotion.backends.budget_clock import FoldClock, carried_out, slowest
from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.divergence import DivergenceGuard, TrainingDiverged, check_finite_probabilities, likely_cause
from nikl_emotion.backends.emotion_trainer import (
    EmotionTrainer,
    fold_trainer_inputs,
    predict_in_order,
)
from nikl_emotion.backends.encoder_cost import EncoderCostMeter
from nikl_emotion.backends.encoder_search import EncoderSearchTrials
from nikl_emotion.backends.engines import (
    free_engine,
    gathered_state_dict,
    open_waiting_group,
    wait_for_the_main_process,
    whole_models,
)
from nikl_emotion.backends.fold_backend import (
    CostMeter,
    FoldBackend,
    FoldData,
    OnnxExporter,
    PostTrainer,
    PreparedRun,
    SearchTrials,
    pseudo_label_rows,
    replace_best,
    write_fold_outputs,
)
from nikl_emotion.backends.heads import HEADS
from nikl_emotion.backends.masked_lm import MaskedLMPostTrainer
from nikl_emotion.backends.model_card import write_model_card
from nikl_emotion.backends.onnx_export import EncoderOnnxExporter
from nikl_emotion.backends.precision import LoadOptions, LoadRecord
from nikl_emotion.backends.techniques import enable_multi_sample_dropout
from nikl_emotion.backends.tracking import end_fold_tracking, fold_trainer_settings, push_fold
from nikl_emotion.backends.trainer_parts import keep_tensorboard_logs
from nikl_emotion.base.checkpoint_files import AVERAGING_STATE_FILE
from nikl_emotion.base.config import ModelArguments, ModelLoading, RunSettings, TechniqueArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.vocabulary import choosing_rows_name, is_offline
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.run_folder import FoldFolder, RunFolder, last_complete_checkpoint, read_mapping
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, fill_template
from nikl_emotion.text.preprocessing import PREPROCESSING_FILE, Preprocessing, encode, warn_if_preprocessing_differs

logger = logging.getLogger(__name__)

__all__ = [
    "EncoderBackend",
    "backbone_loading",
    "load_classifier",
    "backbone_and_encodings",
    "prepare_backbone",
]


class EncoderBackend(FoldBackend):
    """Every `model_name_or_path` that is not another backend's: a hub name, a local model folder, offline:...

    A backend that trains like it subclasses it (the decoder's does) and overrides its hooks where it differs:
    `new_model` (a fresh model for a fold or a search trial), `save_model` (into best/), `load_record` (how best/
    loads), `load_checkpoint`, and the abilities it does not offer (`search_trials`, `post_trainer`, `student`,
    `onnx_exporter` return None)."""

    name = "encoder"
    supports_techniques = True
    supports_multi_process = True
    supports_early_stopping_split = True
    supports_time_budget = True

    @property
    def heads(self) -> tuple[str, ...]:
        """Every registered head (`heads.HEADS`, a test's or a plugin's included)."""
        return tuple(HEADS)

    def matches(self, model_name_or_path: str) -> bool:
        return True

    def search_trials(self) -> SearchTrials | None:
        return EncoderSearchTrials(self)

    def post_trainer(self) -> PostTrainer | None:
        return MaskedLMPostTrainer()

    def student(self) -> FoldBackend | None:
        return self  # train_fold learns float labels (soft targets) as it learns gold ones

    def onnx_exporter(self) -> OnnxExporter | None:
        return EncoderOnnxExporter()

    def cost_meter(self) -> CostMeter | None:
        return EncoderCostMeter(self)

    def check_spec(self, model_name_or_path: str) -> None:
        if is_offline(model_name_or_path):
            try:
                parse_offline_spec(model_name_or_path)
            except ValueError as exc:
                raise PipelineError(f"model_name_or_path: {exc}") from None
        else:
            check_model_folder(model_name_or_path)

    def check_loading(self, model_name_or_path: str, loading: ModelLoading) -> None:
        """The model-loading keys against the checkpoint (custom code, the attention kernel); an offline backbone is
        built here and needs none."""
        if not is_offline(model_name_or_path):
            check_model_loading(model_name_or_path, loading)

    def pretokenizer_of(self, model_name_or_path: str) -> str | None:
        """An offline backbone's tokenizer is trained here with the run's pre-tokenizer; a folder post-trained here
        says which it learned; a hub tokenizer never learned segmented text."""
        if is_offline(model_name_or_path):
            return None
        if os.path.isfile(os.path.join(model_name_or_path, PREPROCESSING_FILE)):
            return Preprocessing.load(model_name_or_path).pretokenizer
        return "none"

    def prepare(
        self,
        settings: RunSettings,
        preprocessing: Preprocessing,
        cleaned: Dataset,
        cleaned_test: Dataset | None,
        other_texts: list[str] | tuple = (),
    ) -> PreparedRun:
        model = settings.model
        backbone, tokenizer, encoded, encoded_test = backbone_and_encodings(
            model, preprocessing, settings.training, cleaned, cleaned_test, other_texts
        )
        return PreparedRun(
            backbone,
            tokenizer,
            encoded,
            encoded_test,
            lambda rows: encode(rows, tokenizer, preprocessing, max_unknown_rate=model.max_unknown_rate),
        )

    def train_fold(self, settings: RunSettings, data: FoldData, folder: FoldFolder | None = None) -> dict:
        """Train one fold (resuming an interrupted one), predict its validation and test rows in order, and write
        its files, `done.json` last, into `folder` (default: the run's fold_K). Every rank calls this; the main
        process writes. The model is built and saved by `new_model` / `save_model` (a subclass's, the decoder's)."""
        training = settings.training
        folder = folder or RunFolder(training.output_dir).fold(data.fold)
        set_seed(training.seed)
        techniques = settings.techniques
        cause = likely_cause(training.learning_rate, techniques.adversarial, techniques.adversarial_epsilon)
        trainer = self.fold_trainer(settings, data, folder)
        val_rows = data.val_rows  # `select`ed once: predicted, scored and written
        guard = DivergenceGuard(data.fold, cause)
        trainer.add_callback(guard)
        try:
            _train_resuming(trainer, folder, data.fold)
            guard.raise_if_diverged()
            val_probs = predict_in_order(trainer, data.preprocessing, val_rows)  # every rank predicts its share
            test_probs = (
                predict_in_order(trainer, data.preprocessing, data.encoded_test)
                if data.encoded_test is not None
                else None
            )
            check_finite_probabilities(
                data.fold, trainer.state.global_step, cause, validation=val_probs, test=test_probs
            )
        except TrainingDiverged:
            if trainer.is_world_process_zero():  # nothing of a diverged fold is worth resuming from
                shutil.rmtree(folder.checkpoints, ignore_errors=True)
            raise
        weights = gathered_state_dict(trainer)  # every rank: an engine that splits the weights gathers them
        result: dict = {}
        if trainer.is_world_process_zero():
            result = score(np.asarray(val_rows["labels"]), fixed_rule(settings.decision).decide(val_probs))
            self.save_best(settings, trainer, data, folder, result, weights)
            result.update(_fold_state(trainer, data))
            push_fold(training, folder.best, data.fold)  # before done.json: a fold is done once it is pushed
            write_fold_outputs(folder, val_rows, val_probs, data.encoded_test, test_probs, result)
        end_fold_tracking()
        wait_for_the_main_process(trainer.accelerator)  # it saved best/ and pushed it alone
        free_engine(trainer)  # the fold loop collects the rest before the next fold (engines.release_memory)
        return result

    def fold_trainer(self, settings: RunSettings, data: FoldData, folder: FoldFolder) -> EmotionTrainer:
        """The fold's EmotionTrainer: a fresh classifier from the backbone, checkpoints in the fold's folder."""
        training = settings.training
        with_markers = data.preprocessing.input_format == "marker"
        tokenizer = load_tokenizer(data.backbone, with_markers=with_markers, loading=backbone_loading(settings.model))
        model = self.new_model(data.backbone, tokenizer, settings, data.preprocessing.classifier_head)
        fold_args = dataclasses.replace(
            training,
            output_dir=folder.checkpoints,
            remove_unused_columns=False,
            **fold_trainer_settings(training, data.fold),
        )
        inputs = fold_trainer_inputs(data.train_rows, data.choosing_rows, tokenizer, settings)
        trainer = EmotionTrainer(model=model, args=fold_args, **inputs)
        keep_tensorboard_logs(trainer, folder.runs)
        if data.ends_at is not None:
            _follow_the_fold_clock(trainer, data, len(inputs["eval_dataset"]))
        return trainer

    def new_model(self, backbone: str, tokenizer, settings: RunSettings, head: str = "cls"):
        """A fresh classifier to fine-tune from `backbone` (each fold, each HP-search trial)."""
        return load_classifier(backbone, tokenizer, settings.techniques, head, backbone_loading(settings.model))

    def save_model(self, model, tokenizer, path: str, model_args: ModelArguments, weights: dict | None = None) -> None:
        """The fine-tuned model and its tokenizer into `path` (best/ being written); `weights`, the whole model's
        state dict where an engine split it across the processes (None: the model's own)."""
        model.save_pretrained(path, state_dict=weights)
        tokenizer.save_pretrained(path)

    def save_best(
        self,
        settings: RunSettings,
        trainer: EmotionTrainer,
        data: FoldData,
        folder: FoldFolder,
        result: dict,
        weights: dict | None = None,
    ) -> None:
        """The best checkpoint (the Trainer has loaded it back) with its preprocessing settings, its loading record
        and model card, written beside and then renamed: a kill never leaves a half-written best/."""
        config = _run_config(settings.training.output_dir)

        def write(path: str) -> None:
            os.makedirs(path, exist_ok=True)
            self.save_model(trainer.model, trainer.processing_class, path, settings.model, weights)
            # how to load it to predict as the fold did: the settings' record, corrected by what the engine ran
            self.load_record(settings.model, trainer.args).as_ran(trainer.accelerator, trainer.model).save(path)
            write_model_card(path, config, data.fold, result)

        replace_best(folder, data.preprocessing, write)

    def owns_checkpoint(self, folder: str) -> bool:
        return True  # the last in the registry: any folder no other backend claims is read as a Hugging Face model

    def load_checkpoint(
        self, folder: str, device=None, threads: int | None = None, options: LoadOptions | None = None
    ) -> CheckpointClassifier:
        return CheckpointClassifier.from_pretrained(folder, device=device, threads=threads, options=options)

    def load_record(self, model_args: ModelArguments, training_args: TrainingArguments) -> LoadRecord:
        """How best/ was made (loading.json): every weight trained in float32, under the run's autocast."""
        return LoadRecord.for_training(model_args, training_args, frozen_base=False)


def backbone_loading(model_args: ModelArguments) -> ModelLoading:
    """The model-loading keys for the run's backbone: the settings' for a hub name or folder; none for an offline
    backbone, which this run built."""
    return ModelLoading() if is_offline(model_args.model_name_or_path) else model_args.loading


def load_classifier(
    backbone: str,
    tokenizer,
    technique_args: TechniqueArguments | None = None,
    head: str = "cls",
    loading: ModelLoading = ModelLoading(),
):
    """A fresh classifier from the backbone under `head` (float32 weights, precision.py), with the techniques that
    change its forward pass (multi-sample dropout)."""
    model = load_model(backbone, tokenizer, head, loading)
    if technique_args is not None:
        enable_multi_sample_dropout(model, technique_args.multi_sample_dropout)
    return model


def backbone_and_encodings(
    model_args: ModelArguments,
    preprocessing: Preprocessing,
    training_args: TrainingArguments,
    cleaned: Dataset,
    cleaned_test: Dataset | None = None,
    other_texts: list[str] | tuple = (),
):
    """(backbone path, tokenizer, encoded rows, encoded test rows or None); the main process fills the cache first.
    An offline backbone's tokenizer learns the training, test and `other_texts` (what else the run encodes), and in
    the `prompt` and `instruction` formats the training rows' prompts (their words would otherwise be unknown)."""
    train_texts = list(cleaned["text"])
    texts = train_texts + (list(cleaned_test["text"]) if cleaned_test is not None else []) + list(other_texts)
    if preprocessing.input_format == "prompt":
        texts += [PROMPT_TEMPLATE.format(target=target) for target in cleaned["target"] if target is not None]
    if preprocessing.input_format == "instruction":
        texts += [fill_template(preprocessing.input_template, "", target) for target in cleaned["target"]]
    backbone = prepare_backbone(model_args, texts, training_args.output_dir, training_args.seed, len(train_texts))
    if training_args.process_index == 0:
        warn_if_preprocessing_differs(backbone, preprocessing)
    with training_args.main_process_first(desc="tokenizing"):
        loading = backbone_loading(model_args)
        tokenizer = load_tokenizer(backbone, with_markers=preprocessing.input_format == "marker", loading=loading)
        check_max_seq_length(preprocessing.max_seq_length, backbone, tokenizer, loading)
        limit = model_args.max_unknown_rate
        encoded = encode(cleaned, tokenizer, preprocessing, max_unknown_rate=limit)
        encoded_test = (
            encode(cleaned_test, tokenizer, preprocessing, max_unknown_rate=limit) if cleaned_test is not None else None
        )
    return backbone, tokenizer, encoded, encoded_test


def prepare_backbone(
    model_args: ModelArguments, texts: list[str], output_dir: str, seed: int, train_text_count: int | None = None
) -> str:
    """The path to load the backbone from. An offline backbone is built once per run, its tokenizer from every text
    the run will encode (training, test and other files' texts; labels unused), each character given a token. A
    backbone built before test texts were included (its spec digests the first `train_text_count` texts only, the
    training texts) is kept, so an older run resumes with the vocabulary its folds were trained with."""
    if not is_offline(model_args.model_name_or_path):
        return model_args.model_name_or_path
    path = RunFolder(output_dir).backbone

    def spec_of(some_texts: list[str], **more) -> dict:
        digest = hashlib.sha256("\n".join(some_texts).encode("utf-8")).hexdigest()  # other data -> other vocabulary
        return {
            "model_name_or_path": model_args.model_name_or_path,
            "vocab_size": model_args.offline_vocab_size,
            "seed": seed,
            "texts_sha256": digest,
            **more,
        }

    spec = spec_of(texts, alphabet="complete")
    marker = RunFolder(output_dir).backbone_spec
    state = PartialState()
    with state.main_process_first():
        existing = read_mapping(marker)
        legacy = spec_of(texts[:train_text_count]) if train_text_count is not None else None
        if existing not in (spec, legacy) and state.is_main_process:
            shutil.rmtree(path, ignore_errors=True)
            with whole_models():  # built by this process alone
                build_offline_backbone(texts, path, model_args.model_name_or_path, model_args.offline_vocab_size, seed)
            write_json_atomic(marker, spec)
    return path


def _train_resuming(trainer: EmotionTrainer, folder: FoldFolder, fold: int) -> None:
    """Train, resuming from the last fully written checkpoint of an interrupted fold (a half-written one is
    pruned first, by the main process)."""
    # a run with weight averaging needs the raw weights too, written after the Trainer's files
    required = (
        (AVERAGING_STATE_FILE,)
        if any(isinstance(c, WeightAveraging) for c in trainer.callback_handler.callbacks)
        else ()
    )
    if trainer.is_world_process_zero():
        last_complete_checkpoint(folder.checkpoints, required)
    trainer.accelerator.wait_for_everyone()
    open_waiting_group(trainer.accelerator)  # every process is here: the fold's end waits on it
    resume = last_complete_checkpoint(folder.checkpoints, required)
    if resume:
        logger.info("fold %d: resuming from %s", fold, os.path.basename(resume))
    trainer.train(resume_from_checkpoint=resume)


def _follow_the_fold_clock(trainer: EmotionTrainer, data: FoldData, evaluated_rows: int) -> None:
    """time_budget_minutes: the fold's schedule follows a `FoldClock` ending at `data.ends_at`, its reserve the
    rows predicted after training (validation and test) per row an evaluation scores."""
    predicted = len(data.val_index) + (len(data.encoded_test) if data.encoded_test is not None else 0)
    clock = FoldClock(data.ends_at, predicted / max(evaluated_rows, 1), functools.partial(slowest, trainer.accelerator))
    trainer.budget_clock = clock
    trainer.add_callback(clock)


def _time_budget_record(trainer: EmotionTrainer) -> dict | None:
    """What the fold's clock did (None without time_budget_minutes): steps, seconds, progress, what ended it."""
    clock = trainer.budget_clock
    if not isinstance(clock, FoldClock):
        return None
    return {**carried_out(clock, trainer.state), "ended_by": clock.ended_by(trainer.state)}


def _fold_state(trainer: EmotionTrainer, data: FoldData) -> dict:
    best = trainer.state.best_model_checkpoint
    return {
        "fold": data.fold,
        "best_checkpoint": best and os.path.basename(best),
        "best_metric": trainer.state.best_metric,
        "epochs_run": trainer.state.epoch,
        "train_rows": int(len(data.train_index)),
        "pseudo_label_rows": pseudo_label_rows(data),
        # which rows chose the epoch: the validation rows (its scores above are then optimistic) or held-out ones
        "epoch_chosen_on": choosing_rows_name(held_out=data.held_out_choosing_index is not None),
        "choosing_rows": len(data.choosing_rows),
        "time_budget": _time_budget_record(trainer),
        # how it trained: the processes (each with per_device_train_batch_size rows a step) and the engine
        "processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        # the main process's resident memory once the fold has trained and predicted: equal fold after fold when
        # nothing of the earlier folds' engines is kept
        "process_rss_mb": _resident_megabytes(),
    }


def _run_config(output_dir: str) -> dict:
    """The run's resolved configuration, as `prepare_output_dir` saved it ({} when train_fold runs on its own)."""
    return read_mapping(RunFolder(output_dir).config)


def _resident_megabytes() -> float | None:
    """This process's resident set size in MB (None where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
