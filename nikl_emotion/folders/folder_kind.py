"""What made a folder. Every command that writes a folder marks it with its kind when it starts (`KIND_FILE`), and
refuses, before any work, an output folder that is not empty and not of its own kind, or that lies inside another
command's folder. So no command deletes, overwrites or serves a folder it does not own.

Folders written before the mark existed are recognised by the files they hold, as each command recognised them
before (`_legacy_kind`, reading the names in run_folder.py), so existing runs still resume. `prepare_output_dir`
claims a command's folder and refuses to mix two configurations in it; `OWN_NAMES` says which names each kind owns.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from nikl_emotion.base.checkpoint_files import EXPORT_FILE, EXPORT_FILES, MODEL_CARD_FILE, ONNX_FILE, SAVED_MODEL_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic, write_text_atomic
from nikl_emotion.folders.run_folder import (
    CONFIG_FILE,
    DISTILL_FILE,
    FOLD_PATTERN,
    HP_SEARCH_FILES,
    INPUTS_FILE,
    STUDENT_FILES,
    FoldFolder,
    PostTrainFolder,
    RecipeFolder,
    RunFolder,
    StackFolder,
    config_difference,
    inputs_difference,
    is_run_file,
    property_names,
    read_mapping,
)

__all__ = [
    "KIND_FILE",
    "CONTAINER_KINDS",
    "describe",
    "is_ignorable",
    "holds_nothing",
    "folder_kind",
    "require_kind",
    "check_output_folder",
    "claim_folder",
    "mark_folder",
    "FolderOwner",
    "prepare_output_dir",
    "OWN_NAMES",
    "POST_TRAIN_OWNER",
    "STUDENT_OWNER",
    "check_not_a_folders_own_file",
]


KIND_FILE = ".nikl_emotion_folder.json"  # {"kind": ..., "made_by": ...}; hidden: it is not a result

# kind -> (the command that writes it, how messages name it)
_KINDS = {
    "run": ("train.py", "a train.py run"),
    "fold": ("train.py", "a fold of a train.py run"),
    "post-training": ("post_train.py", "a post_train.py model folder"),
    "distillation": ("distill.py", "a distill.py student folder"),
    "export": ("export.py", "an export.py ONNX folder"),
    "checkpoint": ("train.py", "a model checkpoint"),
    "stack": ("ensemble.py", "an ensemble.py stack of runs"),
    "recipe": ("recipe.py", "a recipe.py folder"),
}
# kinds whose folder holds other commands' folders (a recipe's stages): a folder may lie inside one
CONTAINER_KINDS = ("recipe",)
# the files that say what an unmarked folder is (`_legacy_kind`), named where the folders' layouts are
_FOLD_SIGNS = tuple(name for name in FoldFolder.file_names() if name != FoldFolder("").runs)  # logs alone say nothing
_post = PostTrainFolder("")
_POST_TRAIN_SIGNS = (_post.summary, _post.time_budget, _post.eval_loss_before)


def describe(kind: str) -> str:
    return _KINDS.get(kind, (None, f"a folder of kind {kind!r}"))[1]


def is_ignorable(name: str) -> bool:
    """Names that do not make a folder anyone's: flock files (a refused or killed start may leave them), the mark
    itself, and the mark being written (another process claiming the folder this instant: its atomic write's
    staging file, `fileio.write_json_atomic`)."""
    staging_mark = name.startswith(f".{KIND_FILE}.") and name.endswith(".tmp")
    return name.endswith(".lock") or name == KIND_FILE or staging_mark


def holds_nothing(folder: str) -> bool:
    """A folder with no content but lock files and its mark (or no folder at all)."""
    return not os.path.isdir(folder) or all(is_ignorable(name) for name in os.listdir(folder))


def _recorded_kind(folder: str) -> str | None:
    """The kind written in the folder's mark, None without one (an unreadable mark is an error, not a guess)."""
    path = os.path.join(folder, KIND_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            kind = json.load(handle).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise PipelineError(f"{path}: cannot read this folder's kind ({exc}); restore or delete the file") from None
    if not isinstance(kind, str):
        raise PipelineError(f"{path}: 'kind' must be a string; restore or delete the file")
    return kind


def _config_keys(folder: str) -> set[str]:
    try:
        return set(read_mapping(os.path.join(folder, CONFIG_FILE)))
    except PipelineError:  # an unreadable config says nothing about the folder's kind
        return set()


def _legacy_kind(folder: str) -> str | None:
    """A folder without a mark, recognised by the files its command writes (None when nothing says)."""
    names = set(os.listdir(folder))
    keys = _config_keys(folder) if CONFIG_FILE in names else set()
    has_inputs = INPUTS_FILE in names
    if EXPORT_FILE in names or ONNX_FILE in names:
        return "export"
    if DISTILL_FILE in names or ("teacher_run" in keys and has_inputs):
        return "distillation"
    if names & set(_POST_TRAIN_SIGNS) or ("mlm_probability" in keys and has_inputs):
        return "post-training"
    if FOLD_PATTERN.fullmatch(os.path.basename(os.path.normpath(folder))) and names & set(_FOLD_SIGNS):
        return "fold"
    if "num_folds" in keys and (has_inputs or any(FOLD_PATTERN.fullmatch(name) for name in names)):
        return "run"
    if HP_SEARCH_FILES[0] in names:  # the search's config: a run folder that holds only a study
        return "run"
    if "config.json" in names and any(name.endswith((".safetensors", ".bin")) for name in names):
        return "checkpoint"
    return None


def folder_kind(folder: str) -> str | None:
    """The folder's kind: its mark, else what its files say; None for a missing folder or one nobody made."""
    if not os.path.isdir(folder):
        return None
    return _recorded_kind(folder) or _legacy_kind(folder)


def _enclosing_folder(folder: str) -> tuple[str, str] | None:
    """The nearest folder above `folder` that a command of this pipeline made, with its kind."""
    path = os.path.realpath(folder)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
        kind = folder_kind(path)
        if kind is not None:
            return path, kind


def require_kind(folder: str, kind: str, option: str) -> None:
    """A folder read as `kind` (e.g. the run `inference.py --run` serves) must be one: another command's folder is
    refused by name rather than read for files it happens to share."""
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise PipelineError(f"{option}: {folder} holds {describe(found)}, not {describe(kind)}")


def check_output_folder(
    folder: str, kind: str, *, may_lie_in: tuple[str, ...] = (), option: str = "output_dir"
) -> None:
    """Refuse (before any work) an output folder that another command made, or that holds files of nobody's, or
    that lies inside another command's folder (except in the kinds of `may_lie_in`)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise PipelineError(f"{option}: {folder} is a file, not a folder")
    enclosing = _enclosing_folder(folder)
    if enclosing is not None and enclosing[1] not in (*may_lie_in, *CONTAINER_KINDS):
        where, outer = enclosing
        raise PipelineError(
            f"{option}: {folder} lies inside {where}, {describe(outer)}; {_KINDS[kind][0]} would mix "
            "its files with that folder's: use a folder outside it"
        )
    found = folder_kind(folder)
    if found == kind or holds_nothing(folder):  # a mark alone (a start refused before writing anything) binds nobody
        return
    if found is not None:
        raise PipelineError(
            f"{option}: {folder} holds {describe(found)}, not {describe(kind)}; {_KINDS[kind][0]} "
            "replaces only its own folders: use a new or empty folder"
        )
    others = sorted(name for name in os.listdir(folder) if not is_ignorable(name))
    listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    raise PipelineError(
        f"{option}: {folder} holds other files ({listed}) and is not {describe(kind)}; "
        f"{_KINDS[kind][0]} writes only into a new or empty folder, or one it made: use another"
    )


def claim_folder(folder: str, kind: str, **check) -> None:
    """`check_output_folder`, then the folder is created and marked as `kind` (once)."""
    check_output_folder(folder, kind, **check)
    mark_folder(folder, kind)


def mark_folder(folder: str, kind: str) -> None:
    """Write the kind into a folder this command made (no check: for folders a command creates inside its own)."""
    os.makedirs(folder, exist_ok=True)
    if _recorded_kind(folder) != kind:
        write_json_atomic(os.path.join(folder, KIND_FILE), {"kind": kind, "made_by": _KINDS[kind][0]})


# what each kind of folder writes at its top level: the names no other command may replace
@dataclass(frozen=True)
class FolderOwner:
    """A command's output folder as `prepare_output_dir` claims it: its kind (folder_kind's names), which names it
    writes (`--overwrite` deletes only those) and whether it holds results yet (a folder without any is taken over
    by a command with another configuration)."""

    kind: str = "run"
    is_run_file: Callable[[str], bool] = is_run_file
    has_results: Callable[[str], bool] = lambda folder: RunFolder(folder).has_results()


_RUN_OWNER = FolderOwner()
POST_TRAIN_OWNER = FolderOwner(
    "post-training", PostTrainFolder.is_run_file, lambda folder: PostTrainFolder(folder).has_results()
)
STUDENT_OWNER = FolderOwner(
    "distillation",
    lambda name: name in STUDENT_FILES,
    lambda folder: os.path.isdir(os.path.join(folder, "best")),  # the student's one checkpoint
)


def prepare_output_dir(
    output_dir: str,
    config: dict,
    overwrite: bool,
    inputs: dict[str, str] | None = None,
    defaults: dict | None = None,
    owner: FolderOwner = _RUN_OWNER,
) -> None:
    """Claim output_dir for a command of `kind` (folder_kind.py: another command's folder, a folder of nobody's
    files or one inside another command's folder is refused) and refuse to mix two configurations (or two versions
    of an input file) in it once it holds results; `overwrite` deletes the old run's files first (only the names
    `is_run_file` accepts). A folder whose earlier run stopped before producing results (a crash on a bad value, a
    kill during set-up) is simply taken over, so the corrected command is not refused."""
    kind, is_run_file, has_results = owner.kind, owner.is_run_file, owner.has_results
    claim_folder(output_dir, kind)
    existing = os.path.join(output_dir, CONFIG_FILE)
    inputs_file = os.path.join(output_dir, INPUTS_FILE)
    if os.path.exists(existing):
        old, old_inputs = read_mapping(existing), read_mapping(inputs_file)
        difference = config_difference(old, config, defaults) or inputs_difference(old_inputs, inputs or {})
        if overwrite or (difference is not None and not has_results(output_dir)):
            for name in os.listdir(output_dir):
                if is_run_file(name):
                    path = os.path.join(output_dir, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        elif difference is not None:
            raise PipelineError(
                f"{output_dir} holds {describe(kind)} with another configuration ({difference}); "
                "use another output_dir, or --overwrite true to delete it and start again"
            )
    os.makedirs(output_dir, exist_ok=True)
    write_text_atomic(existing, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    if inputs is not None:
        write_json_atomic(inputs_file, inputs)


OWN_NAMES = {
    "run": lambda name: is_run_file(name) or name in HP_SEARCH_FILES,
    "fold": lambda name: name in FoldFolder.file_names(),
    "post-training": POST_TRAIN_OWNER.is_run_file,
    "distillation": STUDENT_OWNER.is_run_file,
    "export": lambda name: name in EXPORT_FILES or SAVED_MODEL_FILE.fullmatch(name) is not None,
    "checkpoint": lambda name: name == MODEL_CARD_FILE or SAVED_MODEL_FILE.fullmatch(name) is not None,
    "stack": lambda name: name in property_names(StackFolder),
    "recipe": lambda name: name in property_names(RecipeFolder),
}


def check_not_a_folders_own_file(path: str, option: str) -> None:
    """An output file of inference.py or ensemble.py may sit in a run's folder (OUT/dev_submission.jsonl), but must
    not replace a file the folder's command wrote (OUT/submission.jsonl, OUT/fold_0/val_probs.jsonl), nor one of
    its hidden files (a fold's lock, the folder's mark, a writer's temporary)."""
    enclosing = _enclosing_folder(path)
    if enclosing is None:
        return
    folder, kind = enclosing
    name = os.path.relpath(os.path.realpath(path), folder).split(os.sep)[0]
    owns = OWN_NAMES.get(kind)
    if name.startswith(".") or (owns is not None and owns(name)):
        raise PipelineError(
            f"{option}: {path} is a file of {folder}, {describe(kind)}, which its command wrote and "
            "reads back: write to another path"
        )
