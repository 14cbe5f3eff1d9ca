"""The encoder backend: a Hugging Face encoder (hub, local folder or an offline backbone built here) fine-tuned per
fold with `EmotionTrainer` (`encoder_fold`, imported when a fold trains). `prepare` builds or finds the backbone
and tokenizes the run's rows; `train_fold` trains one fold (resuming an interrupted one), predicts its rows with the
same `EmotionClassifier` inference uses, and saves `best/` (weights, tokenizer, preprocessing.json, model card)
whole or not at all."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from typing import TYPE_CHECKING

from accelerate import PartialState
from datasets import Dataset

from nikl_emotion.backends.backbone import (
    backbone_loading,
    build_offline_backbone,
    check_max_seq_length,
    check_model_folder,
    check_model_loading,
    load_model,
    load_tokenizer,
    parse_offline_spec,
)
from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.engines import whole_models
from nikl_emotion.backends.fold_backend import (
    CostMeter,
    FoldBackend,
    FoldData,
    OnnxExporter,
    PostTrainer,
    PreparedRun,
    SearchTrials,
    replace_best,
)
from nikl_emotion.backends.heads import HEADS
from nikl_emotion.backends.model_card import write_model_card
from nikl_emotion.backends.precision import LoadOptions, LoadRecord
from nikl_emotion.backends.techniques import enable_multi_sample_dropout
from nikl_emotion.base.config import ModelArguments, ModelLoading, RunSettings, TechniqueArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.vocabulary import is_offline
from nikl_emotion.folders.run_folder import FoldFolder, RunFolder, read_mapping
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, fill_template
from nikl_emotion.text.preprocessing import PREPROCESSING_FILE, Preprocessing, encode, warn_if_preprocessing_differs

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from nikl_emotion.backends.emotion_trainer import EmotionTrainer

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
        # each ability is imported when asked for: a process that only predicts needs none of them
        from nikl_emotion.backends.encoder_search import EncoderSearchTrials

        return EncoderSearchTrials(self)

    def post_trainer(self) -> PostTrainer | None:
        from nikl_emotion.backends.masked_lm import MaskedLMPostTrainer

        return MaskedLMPostTrainer()

    def student(self) -> FoldBackend | None:
        return self  # train_fold learns float labels (soft targets) as it learns gold ones

    def onnx_exporter(self) -> OnnxExporter | None:
        from nikl_emotion.backends.onnx_export import EncoderOnnxExporter

        return EncoderOnnxExporter()

    def cost_meter(self) -> CostMeter | None:
        from nikl_emotion.backends.encoder_cost import EncoderCostMeter

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
        from nikl_emotion.backends.encoder_fold import fine_tune_fold  # the Trainer's modules: to train, not predict

        return fine_tune_fold(self, settings, data, folder)

    def fold_trainer(self, settings: RunSettings, data: FoldData, folder: FoldFolder) -> EmotionTrainer:
        """The fold's EmotionTrainer: a fresh classifier from the backbone, checkpoints in the fold's folder."""
        from nikl_emotion.backends.encoder_fold import new_fold_trainer

        return new_fold_trainer(self, settings, data, folder)

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


def _run_config(output_dir: str) -> dict:
    """The run's resolved configuration, as `prepare_output_dir` saved it ({} when train_fold runs on its own)."""
    return read_mapping(RunFolder(output_dir).config)
