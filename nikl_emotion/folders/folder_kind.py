"""What made a folder. Every command that writes a folder marks it with its kind when it starts (`KIND_FILE`), and
refuses, before any work, an output folder that is not empty and not of its own kind, or that lies inside another
command's folder. So no command deletes, overwrites or serves a folder it does not own.

Folders written before the mark existed are recognised by the files they hold, as each command recognised them
before (`legacy_kind`), so existing runs still resume.
"""

from __future__ import annotations

import json
import os
import re

from nikl_emotion.base.checkpoint_files import EXPORT_FILE, ONNX_FILE, POST_TRAIN_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic

KIND_FILE = ".nikl_emotion_folder.json"  # {"kind": ..., "made_by": ...}; hidden: it is not a result

# kind -> (the command that writes it, how messages name it)
KINDS = {
    "run": ("train.py", "a train.py run"),
    "fold": ("train.py", "a fold of a train.py run"),
    "post-training": ("post_train.py", "a post_train.py model folder"),
    "distillation": ("distill.py", "a distill.py student folder"),
    "export": ("export.py", "an export.py ONNX folder"),
    "checkpoint": ("train.py", "a model checkpoint"),
    "stack": ("ensemble.py", "an ensemble.py stack of runs"),
}
FOLD_NAME = re.compile(r"fold_\d+")
FOLD_SIGNS = ("done.json", "val_probs.jsonl", "metrics.json", "best", "best.partial", "checkpoints")
POST_TRAIN_SIGNS = (POST_TRAIN_FILE, "time_budget.json", "eval_loss_before.json")


def describe(kind: str) -> str:
    return KINDS.get(kind, (None, f"a folder of kind {kind!r}"))[1]


def is_ignorable(name: str) -> bool:
    """Names that do not make a folder anyone's: flock files (a refused or killed start may leave them) and the
    mark itself."""
    return name.endswith(".lock") or name == KIND_FILE


def holds_nothing(folder: str) -> bool:
    """A folder with no content but lock files and its mark (or no folder at all)."""
    return not os.path.isdir(folder) or all(is_ignorable(name) for name in os.listdir(folder))


def recorded_kind(folder: str) -> str | None:
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
    import yaml

    try:
        with open(os.path.join(folder, "config.yaml"), encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, ValueError, yaml.YAMLError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def legacy_kind(folder: str) -> str | None:
    """A folder without a mark, recognised by the files its command writes (None when nothing says)."""
    names = set(os.listdir(folder))
    keys = _config_keys(folder) if "config.yaml" in names else set()
    has_inputs = "inputs.json" in names
    if EXPORT_FILE in names or ONNX_FILE in names:
        return "export"
    if "distill.json" in names or ("teacher_run" in keys and has_inputs):
        return "distillation"
    if names & set(POST_TRAIN_SIGNS) or ("mlm_probability" in keys and has_inputs):
        return "post-training"
    if FOLD_NAME.fullmatch(os.path.basename(os.path.normpath(folder))) and names & set(FOLD_SIGNS):
        return "fold"
    if "num_folds" in keys and (has_inputs or any(FOLD_NAME.fullmatch(name) for name in names)):
        return "run"
    if "hp_search_config.yaml" in names:
        return "run"
    if "config.json" in names and any(name.endswith((".safetensors", ".bin")) for name in names):
        return "checkpoint"
    return None


def folder_kind(folder: str) -> str | None:
    """The folder's kind: its mark, else what its files say; None for a missing folder or one nobody made."""
    if not os.path.isdir(folder):
        return None
    return recorded_kind(folder) or legacy_kind(folder)


def enclosing_folder(folder: str) -> tuple[str, str] | None:
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


def check_output_folder(folder: str, kind: str, *, may_lie_in: tuple[str, ...] = (), option: str = "output_dir") -> None:
    """Refuse (before any work) an output folder that another command made, or that holds files of nobody's, or
    that lies inside another command's folder (except in the kinds of `may_lie_in`)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise PipelineError(f"{option}: {folder} is a file, not a folder")
    enclosing = enclosing_folder(folder)
    if enclosing is not None and enclosing[1] not in may_lie_in:
        where, outer = enclosing
        raise PipelineError(f"{option}: {folder} lies inside {where}, {describe(outer)}; {KINDS[kind][0]} would mix "
                            "its files with that folder's: use a folder outside it")
    found = folder_kind(folder)
    if found == kind or holds_nothing(folder):  # a mark alone (a start refused before writing anything) binds nobody
        return
    if found is not None:
        raise PipelineError(f"{option}: {folder} holds {describe(found)}, not {describe(kind)}; {KINDS[kind][0]} "
                            "replaces only its own folders: use a new or empty folder")
    others = sorted(name for name in os.listdir(folder) if not is_ignorable(name))
    listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    raise PipelineError(f"{option}: {folder} holds other files ({listed}) and is not {describe(kind)}; "
                        f"{KINDS[kind][0]} writes only into a new or empty folder, or one it made: use another")


def claim_folder(folder: str, kind: str, **check) -> None:
    """`check_output_folder`, then the folder is created and marked as `kind` (once)."""
    check_output_folder(folder, kind, **check)
    mark_folder(folder, kind)


def mark_folder(folder: str, kind: str) -> None:
    """Write the kind into a folder this command made (no check: for folders a command creates inside its own)."""
    os.makedirs(folder, exist_ok=True)
    if recorded_kind(folder) != kind:
        write_json_atomic(os.path.join(folder, KIND_FILE), {"kind": kind, "made_by": KINDS[kind][0]})
