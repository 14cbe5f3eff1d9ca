"""The Optuna study a search's workers share: its storage (`hp_storage`: SQLite, an RDB URL, or Optuna's journal
file), the sampler and pruner, each worker's signs of life on its running trial (so a killed worker's trial is
marked failed by the next one, not left running for ever), and the study written as a table.

Any number of workers (processes, GPUs, machines) open the same storage and study name; Optuna numbers the trials,
so each worker runs its own. One worker alone, on the default storage, draws exactly the trials its seed gives."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

import yaml

from nikl_emotion.base.config import SearchArguments
from nikl_emotion.base.fileio import write_csv_atomic, write_text_atomic
from nikl_emotion.base.locking import exclusive
from nikl_emotion.folders.run_folder import RunFolder

__all__ = [
    "WORKER",
    "open_study",
    "fail_stale_trials",
    "heartbeat",
    "study_table",
    "write_study",
]

logger = logging.getLogger(__name__)

WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who runs a trial (the trial's `worker` user attribute)
_SILENT_HEARTBEATS = 3  # a running trial silent for this many heartbeats has lost its worker
_MIN_STARTUP_TRIALS = 4  # trials the median pruner lets finish before comparing


def open_study(search: SearchArguments, output_dir: str, seed: int):
    """The study (created if new) with its sampler and pruner. A shared storage (`hp_storage` given) is searched by
    several workers at once: TPE's constant liar keeps them from drawing the same point, and each worker's sampler
    is seeded apart (a parallel search's order depends on timing anyway); the default storage, one worker's, draws
    the trials `seed` gives."""
    import optuna

    storage = _storage(search.hp_storage, output_dir)
    shared = search.hp_storage is not None
    sampler = optuna.samplers.TPESampler(seed=hash((seed, WORKER)) % 2**31 if shared else seed, constant_liar=shared)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=_MIN_STARTUP_TRIALS, n_warmup_steps=0)
        if search.hp_pruner == "median"
        else optuna.pruners.NopPruner()
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=search.hp_study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,  # a study other workers (or an interrupted run) began goes on
    )


def _storage(url: str | None, output_dir: str):
    import optuna

    if url is None:
        return f"sqlite:///{os.path.abspath(RunFolder(output_dir).hp_study)}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = os.path.abspath(url[len("journal:") :])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


def fail_stale_trials(study, heartbeat_seconds: float) -> list[int]:
    """Mark failed the running trials whose worker is gone: a process of this machine that no longer exists, or
    any worker silent for `_SILENT_HEARTBEATS` heartbeats. Returns their numbers."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        last = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else 0)
        silent = time.time() - last
        if worker == WORKER or not (_gone(worker) or silent > _SILENT_HEARTBEATS * heartbeat_seconds):
            continue
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        logger.warning(
            "hp search: trial %d marked failed: its worker %s stopped (last sign of life %.0f s ago)",
            trial.number,
            worker or "(unknown)",
            silent,
        )
        failed.append(trial.number)
    return failed


def _gone(worker: str) -> bool:
    """Whether `worker` (host:pid) was a process of this machine that has ended."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextlib.contextmanager
def heartbeat(trial, seconds: float):
    """The trial's worker, and a sign of life every `seconds` while the block runs (a thread)."""
    trial.set_user_attr("worker", WORKER)
    trial.set_user_attr("heartbeat", time.time())
    stop = threading.Event()

    def beat():
        while not stop.wait(seconds):
            with contextlib.suppress(Exception):  # a storage hiccup must not end the trial; the next beat retries
                trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, name="hp-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def study_table(study) -> list[dict]:
    """One row per trial: number, state, micro-F1, seconds, worker, its values."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "micro_f1": None if trial.value is None else round(trial.value, 6),
                "seconds": None if duration is None else round(duration, 1),
                "worker": trial.user_attrs.get("worker"),
                **trial.params,
            }
        )
    return rows


def write_study(study, output_dir: str, scored_on: str, force: bool = False) -> bool:
    """The table (`hp_search.csv`) and the best trial's keys (`hp_search_best.yaml`) in `output_dir`, once no
    trial of the study is running (the last worker to finish writes them; `force`: now, as `--hp_report` does).
    Workers sharing the folder take turns. Returns whether they were written."""
    from optuna.trial import TrialState

    run = RunFolder(output_dir)
    with exclusive(run.hp_lock, f"{output_dir} (the search's table)", wait=True):
        if not force and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
        write_csv_atomic(run.hp_table, study_table(study))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = max(complete, key=lambda t: t.value)
            header = f"# hp_search trial {best.number}: micro-F1 {best.value:.4f} on {scored_on}\n"
            write_text_atomic(run.hp_best, header + yaml.safe_dump(dict(best.params), sort_keys=False))
    return True
