"""Configuration: YAML + command-line overrides through HfArgumentParser, validated early with clear messages."""

import pytest
import torch
import yaml
from conftest import ROOT, SAMPLE_TRAIN

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.preprocessing import Preprocessing
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.post_training import parse_post_train_config

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def test_yaml_then_command_line_wins(tmp_path):
    settings = parse_config(
        [
            QUICKSTART,
            "--num_folds",
            "4",
            "--input_format",
            "marker",
            "--output_dir",
            str(tmp_path),
            "--cleanse",
            "false",
            "--seed",
            "7",
        ]
    )
    folds, data, training = settings.folds, settings.data, settings.training
    assert folds.num_folds == 4 and data.input_format == "marker" and data.cleanse is False
    assert training.output_dir == str(tmp_path) and training.seed == 7
    assert data.train_files == ["data/sample_train.jsonl"]  # from the YAML
    assert (
        training.eval_strategy == "epoch"
        and training.load_best_model_at_end
        and training.metric_for_best_model == "micro_f1"
    )


def test_train_files_take_several_values():
    data = parse_config([QUICKSTART, "--train_files", str(SAMPLE_TRAIN), str(ROOT / "data" / "sample_dev.jsonl")]).data
    assert len(data.train_files) == 2


def test_resolved_config_reloads_to_the_same_run(tmp_path):
    args = parse_config([QUICKSTART, "--num_folds", "4", "--learning_rate", "3e-4"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(args.resolved(), allow_unicode=True), encoding="utf-8")
    again = parse_config([str(saved)])
    assert again.resolved() == args.resolved()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--input_format", "sandwich"], "input_format: 'sandwich' is not one of pair, marker, prompt"),
        (["--fold", "5"], "fold: must be in [0, 2]"),
        (["--num_folds", "1"], "num_folds: must be at least 2"),
        (["--loss", "hinge"], "loss: 'hinge' is not bce, focal or asl"),
        (["--model_name_or_path", "offline:gpt-huge"], "model_name_or_path: unknown offline backbone"),
        (["--label_smoothing_factor", "0.1"], "label_smoothing_factor: the Trainer's smoothing"),
        (["--loss", "focal", "--focal_gamma", "-1"], "focal_gamma: must be >= 0"),
        (["--loss", "asl", "--asl_gamma_neg", "-0.5"], "asl_gamma_neg: must be >= 0"),
        (["--asl_clip", "1.2"], "asl_clip: must be in [0, 1)"),
        (["--label_smoothing", "1.0"], "label_smoothing: must be in [0, 1)"),
        (["--loss_reduction", "avg"], "loss_reduction: 'avg' is not mean or sum"),
        (["--pos_weight", "1,2"], "pos_weight: expected none, auto or 8"),
        (["--loss", "focal", "--pos_weight", "auto"], "pos_weight: only the bce loss"),
        (["--train_files", "missing.jsonl"], "missing.jsonl: file not found"),
        (["--no_such_key", "1"], "no_such_key"),
        (["--num_folds", "many"], "num_folds"),
        (["--layerwise_lr_decay", "0"], "layerwise_lr_decay: must be in (0, 1]"),
        (["--ema_decay", "1.0"], "ema_decay: must be in [0, 1)"),
        (["--swa_epochs", "-1"], "swa_epochs: must be >= 0"),
        (["--swa_epochs", "50"], "swa_epochs: averages the last 50 epochs of 40"),
        (["--rdrop_alpha", "-1"], "rdrop_alpha: must be a finite number >= 0"),
        (["--multi_sample_dropout", "0"], "multi_sample_dropout: must be at least 1"),
        (["--adversarial", "pgd"], "adversarial: must be one of none, fgm, awp"),
        (["--adversarial_epsilon", "0.5"], "adversarial_epsilon: set adversarial"),
        (["--adversarial", "fgm", "--adversarial_epsilon", "0"], "adversarial_epsilon: must be in (0, 1000] for fgm"),
        (["--pseudo_label_threshold", "0.5"], "pseudo_label_threshold: must be in (0.5, 1)"),
        (["--pseudo_label_run", "no/such/run"], "pseudo_label_run: no/such/run is not a finished train.py run"),
        (
            ["--model_name_or_path", "ngram:tfidf", "--ema_decay", "0.99"],
            "ema_decay: a fine-tuning technique of encoders",
        ),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(PipelineError, match=None) as caught:
        parse_config([QUICKSTART, *override])
    assert message in str(caught.value)


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_folds: [1, 2\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="bad.yaml: invalid YAML"):
        parse_config([str(bad)])


TRAIN_CONFIGS = ["quickstart", "nikl-offline", "offline-cpu", "offline-cpu-ngram", "kcelectra-base", "reference-recipe"]
POST_TRAIN_CONFIGS = ["post_train-quickstart", "post_train-offline", "post_train-kcelectra"]
# (post-training config, the fine-tuning config that starts from its output)
RECIPES = [
    ("post_train-offline", "offline-cpu"),
    ("post_train-kcelectra", "kcelectra-base"),
    ("post_train-quickstart", "quickstart"),
]
SAMPLE_FILES = ["--train_files", str(SAMPLE_TRAIN), "--test_file", str(ROOT / "data" / "sample_test.jsonl")]


def parse_bundled(name: str):
    """A bundled config parsed and validated as its script would, with the sample files in place of the NIKL paths."""
    path = str(ROOT / "configs" / f"{name}.yaml")
    # the GPU configs ask for bf16, which TrainingArguments refuses on a machine without a GPU
    no_gpu = [] if torch.cuda.is_available() else ["--bf16", "false", "--fp16", "false"]
    if name.startswith("post_train"):
        return parse_post_train_config([path, "--train_files", str(SAMPLE_TRAIN), *no_gpu])
    return parse_config([path, *SAMPLE_FILES, *no_gpu])


def test_every_bundled_config_is_covered():
    # accelerate-*.yaml configure the launcher (test_distributed.py and test_engines.py launch them); decoder-lora
    # names a hub decoder: test_decoders.py parses it over a local imitation
    bundled = {path.stem for path in (ROOT / "configs").glob("*.yaml") if not path.stem.startswith("accelerate-")}
    assert bundled == set(TRAIN_CONFIGS) | set(POST_TRAIN_CONFIGS) | {"decoder-lora"}


@pytest.mark.parametrize("name", TRAIN_CONFIGS + POST_TRAIN_CONFIGS)
def test_bundled_configs_parse_and_validate(name):
    parse_bundled(name)  # a misspelt key or a bad value raises PipelineError


@pytest.mark.parametrize("post_train, fine_tune", RECIPES)
def test_recipe_stages_prepare_text_the_same_way(post_train, fine_tune):
    learned = Preprocessing.from_data_args(parse_bundled(post_train).data)
    assert Preprocessing.from_data_args(parse_bundled(fine_tune).data) == learned


def test_the_recipes_stack_members_share_their_folds_and_text():
    """The offline recipe's n-gram stage has its own config (the encoder's keys do not apply to it); what the stack
    needs equal to the fine-tuning stage, the folds and the cleaning, is equal."""
    neural, ngram = parse_bundled("offline-cpu"), parse_bundled("offline-cpu-ngram")
    assert ngram.model.model_name_or_path == "ngram:tfidf" and neural.model.classifier_head == "target_pool"
    assert (ngram.folds.num_folds, ngram.training.seed) == (neural.folds.num_folds, neural.training.seed)
    assert ngram.data.train_files == neural.data.train_files
    assert Preprocessing.from_data_args(ngram.data).cleaning == Preprocessing.from_data_args(neural.data).cleaning


def test_every_config_dataclass_validates_itself_however_it_is_built(tmp_path):
    """Objects built without the parser (dataclasses.replace in the HP search, DecisionArguments(**config) in
    report.py) are checked too: each dataclass validates its own values in __post_init__; what a value names outside
    the settings (a loss class's parameter range, an offline backbone) is checked by config_checks, as parse_config
    does."""

    from nikl_emotion.backends.losses import loss_arguments_class
    from nikl_emotion.base.config import (
        DataArguments,
        DecisionArguments,
        FoldArguments,
        LossArguments,
        MLMArguments,
        ModelArguments,
        PostTrainDataArguments,
    )
    from nikl_emotion.training.config_checks import check_loss_parameters, check_model_name

    cases = [
        (lambda: FoldArguments(num_folds=1), "num_folds: must be at least 2"),
        (lambda: FoldArguments(num_folds=3, fold=3), r"fold: must be in \[0, 2\]"),
        (lambda: DecisionArguments(threshold=1.5), r"threshold: must be in \(0, 1\)"),
        (
            lambda: check_loss_parameters(loss_arguments_class()(loss="focal", focal_gamma=-1.0)),
            "focal_gamma: must be >= 0",
        ),
        (lambda: DecisionArguments(vote_rule="plurality"), "vote_rule: 'plurality' is not"),
        (lambda: check_loss_parameters(LossArguments(loss="hinge")), "loss: 'hinge' is not bce, focal or asl"),
        (
            lambda: check_model_name(ModelArguments(model_name_or_path="offline:gpt-huge").model_name_or_path),
            "model_name_or_path: unknown offline backbone",
        ),
        (lambda: DataArguments(train_files=[str(tmp_path / "missing.jsonl")]), "missing.jsonl: file not found"),
        (lambda: DataArguments(train_files=[], input_format="pair"), "train_files: give at least one"),
        (
            lambda: DataArguments(train_files=[str(SAMPLE_TRAIN)], input_format="xml"),
            "input_format: 'xml' is not one of",
        ),
        (
            lambda: PostTrainDataArguments(train_files=[str(SAMPLE_TRAIN)], validation_fraction=0.7),
            "validation_fraction",
        ),
        (lambda: MLMArguments(mlm_probability=1.5), "mlm_probability: must be in"),
    ]
    for build, message in cases:
        with pytest.raises(PipelineError, match=message):
            build()
    assert FoldArguments(fold=0).num_folds == 5  # valid ones build as before
