"""The run folder's layout is named in one module, and `--overwrite` deletes exactly what the layout calls a run's."""

import os

import pytest

from nikl_emotion.folders.folder_kind import prepare_output_dir
from nikl_emotion.folders.run_folder import (
    HP_SEARCH_FILES,
    PLOT_NAMES,
    FoldFolder,
    PostTrainFolder,
    RunFolder,
    is_run_file,
    plot_file,
)


def named_paths(folder) -> dict[str, str]:
    """Every path a folder class names (its properties)."""
    cls = type(folder)
    return {name: getattr(folder, name) for name in dir(cls) if isinstance(getattr(cls, name), property)}


def test_every_top_level_path_of_a_run_is_a_run_file_or_deliberately_kept(tmp_path):
    run = RunFolder(str(tmp_path))
    paths = list(named_paths(run).values()) + [run.plot(name) for name in PLOT_NAMES] + [run.fold_lock(3)]
    paths += list(named_paths(run.fold(3)).values())
    for path in paths:
        top = os.path.relpath(path, tmp_path).split(os.sep)[0]
        kept = top in HP_SEARCH_FILES or top.endswith(".lock")  # the study accumulates; locks are held while running
        assert is_run_file(top) != kept, f"{top}: neither deleted by --overwrite nor listed as kept"
    with pytest.raises(ValueError, match="unknown plot"):
        plot_file("roc")


def test_overwrite_deletes_the_run_and_keeps_everything_else(tmp_path):
    out = tmp_path / "out"
    run = RunFolder(str(out))
    prepare_output_dir(str(out), {"learning_rate": 1e-3}, overwrite=False)
    written = [
        run.summary,
        run.submission,
        run.decision,
        run.plot("label_totals"),
        run.fold(0).done,
        run.hp_table,
        str(out / "notes.txt"),
    ]
    for path in written:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    prepare_output_dir(str(out), {"learning_rate": 1e-2}, overwrite=True)
    # the folder's mark stays: it is still a train.py run's
    assert sorted(os.listdir(out)) == sorted([".nikl_emotion_folder.json", "config.yaml", "hp_search.csv", "notes.txt"])


def test_post_training_folder_owns_its_paths(tmp_path):
    folder = PostTrainFolder(str(tmp_path))
    assert not folder.has_results() and not folder.is_finished()
    for path in named_paths(folder).values():
        assert os.path.dirname(path) == str(tmp_path)
    assert not folder.is_run_file(os.path.basename(folder.lock)) and folder.is_run_file("checkpoints")
    os.makedirs(folder.checkpoints)
    assert folder.has_results()
    assert isinstance(RunFolder(str(tmp_path)).fold(0), FoldFolder)


def test_a_key_added_later_reads_as_its_neutral_value_in_an_older_run():
    from nikl_emotion.base.config import PIPELINE_ARGUMENT_CLASSES, field_defaults
    from nikl_emotion.folders.run_folder import config_difference

    defaults = field_defaults(*PIPELINE_ARGUMENT_CLASSES)
    old = {"model_name_or_path": "offline:electra-tiny", "max_seq_length": 200}  # written before the key existed
    assert config_difference(old, {**old, "offline_pretokenizer": "none"}, defaults) is None
    assert (
        config_difference(old, {**old, "offline_pretokenizer": "kiwi"}, defaults)
        == "offline_pretokenizer: '(default)' -> 'kiwi'"
    )
    assert config_difference(old, {**old, "max_seq_length": 128}, defaults) == "max_seq_length: 200 -> 128"


def test_every_settings_key_left_out_of_an_older_run_reads_as_its_default():
    """Defaults come from the dataclasses themselves, so a key added later needs no table kept by hand."""
    from nikl_emotion.base.config import PIPELINE_ARGUMENT_CLASSES, DistillArguments, MLMArguments, field_defaults
    from nikl_emotion.folders.run_folder import config_difference

    defaults = field_defaults(*PIPELINE_ARGUMENT_CLASSES, MLMArguments, DistillArguments)
    assert {"layerwise_lr_decay", "objective", "max_unknown_rate", "distill_gold_weight"} <= set(defaults)
    at_defaults = dict(defaults)  # a run made with every key at its default
    for key in at_defaults:
        older = {k: v for k, v in at_defaults.items() if k != key}  # the same run, written before `key` existed
        assert config_difference(older, at_defaults, defaults) is None, key
    changed = {**at_defaults, "ema_decay": 0.999}
    assert (
        config_difference({k: v for k, v in at_defaults.items() if k != "ema_decay"}, changed, defaults)
        == "ema_decay: '(default)' -> 0.999"
    )
