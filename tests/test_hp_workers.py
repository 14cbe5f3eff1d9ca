"""Several workers on one hyper-parameter study (issue 49), as real processes: `train.py --hp-search` started twice
(once as a 2-process DDP launch) with the same journal-file storage and study name runs disjoint trials of one
study, a killed worker's running trial is marked failed by the next, and one table counts them all. (The search
under accelerate's ZeRO-2 and ZeRO-3 configs ran on 2 CPU processes: BENCHMARKS.md, issue 48's second session.)"""

import csv
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.training.hp_search import parse_search_config

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def start_worker(out, journal, trials: int, *extra, launcher=(sys.executable,)) -> subprocess.Popen:
    """A worker of its own (one process, or a launch of several), one thread each (they share the 2 cores)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE", "LOCAL_RANK", "RANK"))}
    environment["OMP_NUM_THREADS"] = "1"
    command = [*launcher, "train.py", str(QUICKSTART), "--output_dir", str(out), "--num_folds", "2"]
    study = ["--hp_storage", f"journal:{journal}", "--hp_study", "shared", "--hp_heartbeat", "1"]
    return subprocess.Popen(
        [*command, "--hp-search", str(trials), *study, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def running_trials(journal) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not journal.exists():
        return []
    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        study = optuna.load_study(study_name="shared", storage=storage)
    except KeyError:  # the study is not created yet
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def test_two_workers_share_one_study_and_a_killed_workers_trial_is_marked_failed(tmp_path):
    out, journal = tmp_path / "search", tmp_path / "shared" / "study.journal"
    # three workers at once on one folder and study; the first (long trials) is killed in its trial; the last is a
    # launch of 2 DDP processes, whose main process draws each trial and both train it
    doomed = start_worker(out, journal, 1, "--num_train_epochs", "500")
    ddp = ("accelerate", "launch", "--multi_gpu", "--num_processes", "2")
    workers = [
        start_worker(out, journal, 2, "--num_train_epochs", "1"),
        start_worker(out, journal, 2, "--num_train_epochs", "1", launcher=ddp),
    ]
    deadline = time.monotonic() + 240
    while not any(trial.user_attrs.get("worker", "").endswith(f":{doomed.pid}") for trial in running_trials(journal)):
        assert doomed.poll() is None, doomed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first worker never started its trial"
        time.sleep(0.2)
    doomed.kill()
    doomed.communicate()
    logs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, logs):
        assert worker.returncode == 0, stderr[-3000:]
    with (out / "hp_search.csv").open(encoding="utf-8") as table:
        trials = list(csv.DictReader(table))
    # disjoint trials, each counted once: the killed worker's (failed, not left running) and two by each worker
    assert sorted(int(trial["trial"]) for trial in trials) == [0, 1, 2, 3, 4]  # in the order they began
    assert sorted(trial["state"] for trial in trials) == ["COMPLETE"] * 4 + ["FAIL"]
    failed = next(trial for trial in trials if trial["state"] == "FAIL")
    assert failed["worker"].endswith(f":{doomed.pid}")
    assert "marked failed: its worker" in "".join(stderr for _, stderr in logs)
    finished = [trial["worker"] for trial in trials if trial["state"] == "COMPLETE"]
    assert len(set(finished)) == 2 and all(finished.count(worker) == 2 for worker in finished)
    assert (out / "hp_search_best.yaml").is_file()
    assert any("table in" in stdout for stdout, _ in logs)
    assert logs[1][0].count("hp search: ") == 1  # the launch's main process alone reports
    # a report on demand reads the same study
    report = run_cli(
        "train.py", QUICKSTART, "--output_dir", out, "--num_folds", "2", "--hp_report", "true",
        "--hp_storage", f"journal:{journal}", "--hp_study", "shared",
    )  # fmt: skip
    assert "hp search: 5 trials on fold 0" in report.stdout


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["--hp_storage", "study.db"], "hp_storage: 'study.db' is not sqlite:///PATH"),
        (["--hp_pruner", "hyperband"], "hp_pruner: 'hyperband' is not"),
        (["--hp_folds", "0", "0"], "hp_folds: give distinct fold numbers"),
        (["--hp_folds", "5"], r"hp_folds: must be in \[0, 1\]"),
        (["--hp_heartbeat", "0"], "hp_heartbeat: must be a positive number"),
    ],
)
def test_a_study_key_out_of_range_is_refused_before_any_work(keys, message, tmp_path):
    with pytest.raises(PipelineError, match=message):
        parse_search_config([str(QUICKSTART), "--output_dir", str(tmp_path / "o"), "--num_folds", "2", *keys])
    assert not (tmp_path / "o").exists()


def test_a_study_key_without_a_search_is_refused(tmp_path):
    refused = run_cli("train.py", QUICKSTART, "--output_dir", tmp_path / "o", "--hp_study", "x", check=False)
    assert refused.returncode == 1 and "add --hp-search N" in refused.stderr
