"""A K-fold run as experiment trackers and the hub see it: one tracking run per fold, named `RUN-foldK` and grouped
under the run's name (W&B `group`, an MLflow tag), and `push_to_hub` pushing what a user serves, never the Trainer's
temporary checkpoints: each fold's `best/` (weights or adapter, tokenizer, preprocessing.json, loading.json, model
card) into the folder `fold_K/` of one repo, `hub_model_id`, and the run's decision files at its root when the run
ends. The Trainer of a fold never pushes itself."""

from __future__ import annotations

import json
import os
import sys

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "run_name",
    "fold_trainer_settings",
    "end_fold_tracking",
    "check_hub",
    "push_fold",
    "push_run_files",
]


_RUN_GROUP_TAG = "nikl_emotion.run"


def run_name(training_args) -> str:
    """The run's name: `run_name` when set apart from the output folder, else the output folder's name."""
    name = training_args.run_name
    if not name or name == training_args.output_dir:
        return os.path.basename(os.path.abspath(training_args.output_dir))
    return name


def fold_trainer_settings(training_args, fold: int) -> dict:
    """TrainingArguments changes for fold `fold`'s Trainer: its own tracking run, no pushing of checkpoints."""
    name = run_name(training_args)
    reporting = set(training_args.report_to or [])
    if "wandb" in reporting:
        os.environ.setdefault("WANDB_RUN_GROUP", name)
    if "mlflow" in reporting:
        os.environ.setdefault("MLFLOW_TAGS", json.dumps({_RUN_GROUP_TAG: name}))
    return {"run_name": f"{name}-fold{fold}", "push_to_hub": False}


def end_fold_tracking() -> None:
    """Close the fold's W&B run (the Trainer's callback reuses an open one, which would put every fold in one run
    with its steps restarting); MLflow's callback ends its run itself."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _hub_repo(training_args):
    """(the HfApi, the repo id) `push_to_hub` writes to, the repo created if it does not exist."""
    from huggingface_hub import HfApi

    api = HfApi(token=training_args.hub_token)
    repo = api.create_repo(
        training_args.hub_model_id or run_name(training_args),
        private=bool(training_args.hub_private_repo),
        exist_ok=True,
    )
    return api, repo.repo_id


def check_hub(training_args) -> None:
    """`push_to_hub`: the repo reached (created where missing) before any fold trains, so a run that cannot push
    (offline, not logged in, no rights to `hub_model_id`) stops at once instead of after its first fold."""
    if not training_args.push_to_hub:
        return
    try:
        _hub_repo(training_args)
    except Exception as exc:  # offline mode, HTTP 401/403, a bad repo id, no network: the library's own errors
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PipelineError(
            f"push_to_hub: cannot reach the hub repo {training_args.hub_model_id or run_name(training_args)} "
            f"({type(exc).__name__}: {detail}); log in (hf auth login), check hub_model_id, or drop push_to_hub"
        ) from None


def push_fold(training_args, best: str, fold: int) -> None:
    """Fold `fold`'s best/ into `fold_K/` of the run's hub repo (nothing without `push_to_hub`)."""
    if not training_args.push_to_hub:
        return
    api, repo = _hub_repo(training_args)
    api.upload_folder(
        repo_id=repo, folder_path=best, path_in_repo=f"fold_{fold}", commit_message=f"fold {fold}: best checkpoint"
    )


def push_run_files(training_args, paths: list[str]) -> None:
    """The finished run's decision files (decision.json, thresholds.json, summary.json, config.yaml, the report)
    at the repo's root, beside the fold folders."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import CommitOperationAdd

    api, repo = _hub_repo(training_args)
    files = [
        CommitOperationAdd(path_in_repo=os.path.basename(path), path_or_fileobj=path)
        for path in paths
        if os.path.isfile(path)
    ]
    api.create_commit(repo_id=repo, operations=files, commit_message="run: decision files")
