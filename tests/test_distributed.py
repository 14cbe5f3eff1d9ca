"""`accelerate launch` with 2 CPU processes (gloo): same folds on every rank, files written once, complete and
ordered."""

import contextlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_TEST, SAMPLE_TRAIN

from nikl_emotion.base.fileio import read_probs
from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_file
from nikl_emotion.text.data import load_jsonl

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# accelerate launch with 2 CPU processes (gloo), no mixed precision, no compilation
TWO_PROCESSES = ("accelerate", "launch", "--num_processes", "2", "--num_machines", "1")
TWO_PROCESSES += ("--mixed_precision", "no", "--dynamo_backend", "no")
# two CPU worker processes (the configs' use_cpu: gloo) under torchrun's agent. Not `--cpu`: accelerate then starts ONE
# process with its simple launcher, whatever --num_processes says
TWO_CPU_PROCESSES = (*TWO_PROCESSES, "--multi_gpu")
ONE_THREAD_EACH = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: no thread barriers

# train.py whose first fold's save (and upload) outlasts the run's collective timeout, cut to 5 s on every rank for
# the wait that follows it: the other rank must wait for the main process however long that takes
_SLOW_FIRST_SAVE = """import datetime, sys, time
from torch.distributed import distributed_c10d
from nikl_emotion.backends import encoder_backend, encoder_fold
from nikl_emotion.commands.train import main
saved, slowed = encoder_backend.EncoderBackend.save_best, []
ended, freed = encoder_fold.end_fold_tracking, encoder_fold.free_engine
def slow_save(*args, **kwargs):
    if not slowed:
        slowed.append(time.sleep(12))
    return saved(*args, **kwargs)
def short_timeout(*args):  # every rank, right before the wait
    ended(*args)
    distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=5))
def usual_timeout(*args):  # every rank, right after it
    distributed_c10d._set_pg_timeout(datetime.timedelta(minutes=30))
    freed(*args)
encoder_backend.EncoderBackend.save_best = slow_save
encoder_fold.end_fold_tracking, encoder_fold.free_engine = short_timeout, usual_timeout
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_process_cpu_run_keeps_the_ranks_in_step_and_writes_complete_ordered_outputs(tmp_path):
    """Two CPU processes train each fold together, with EMA + SWA, R-Drop, multi-sample dropout, FGM, LLRD and the
    target-pooling head, and predict a share of the rows each with their own copy of the model: the gathered
    probabilities equal one process predicting with the saved best/ only if the ranks' weights (and averages)
    stayed identical. The main process alone saves and pushes a fold while the other waits, however long that
    takes (a 13B upload outlasts ddp_timeout's 30 minutes): here fold 0's save takes 12 s while that wait's
    collective timeout is 5 s."""
    out, script = tmp_path / "ddp", tmp_path / "slow_first_save.py"
    script.write_text(_SLOW_FIRST_SAVE, encoding="utf-8")
    techniques = ("--ema_decay", "0.9", "--swa_epochs", "1", "--rdrop_alpha", "1.0", "--multi_sample_dropout", "2")
    techniques += ("--adversarial", "fgm", "--layerwise_lr_decay", "0.8", "--classifier_head", "target_pool")
    result = subprocess.run(
        [
            *TWO_CPU_PROCESSES,
            str(script),
            str(ROOT / "configs" / "quickstart.yaml"),
            *["--output_dir", str(out), "--num_folds", "2", "--num_train_epochs", "2", *techniques],
            # 100 test rows in batches of 16 over 2 ranks: the last step is padded with repeated rows
            *["--per_device_eval_batch_size", "16"],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**ONE_THREAD_EACH, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for k in range(2):
        assert json.loads((out / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8"))["processes"] == 2
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    ids, probs = read_probs(out / "oof.jsonl")
    assert ids == load_jsonl(SAMPLE_TRAIN)["id"] and probs.shape == (len(ids), 8)
    for k in range(2):
        fold_ids, _ = read_probs(out / f"fold_{k}" / "test_probs.jsonl")
        assert fold_ids == load_jsonl(SAMPLE_TEST, "optional")["id"]
    submission = [json.loads(line) for line in (out / "submission.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in submission] == load_jsonl(SAMPLE_TEST, "optional")["id"]
    # rows were sharded over both ranks and gathered back: the same probabilities as one process predicting with
    # the saved checkpoint, in file order, without the rows that pad the last step; the validation rows too
    for source, written in ((SAMPLE_TEST, "test_probs.jsonl"), (SAMPLE_TRAIN, "val_probs.jsonl")):
        single_ids, single_probs = _one_process_probs(out / "fold_0" / "best", source, tmp_path)
        position = {row_id: i for i, row_id in enumerate(single_ids)}
        gathered_ids, gathered_probs = read_probs(out / "fold_0" / written)
        np.testing.assert_allclose(gathered_probs, single_probs[[position[i] for i in gathered_ids]], atol=1e-5)
    assert read_probs(out / "fold_0" / "test_probs.jsonl")[0] == load_jsonl(SAMPLE_TEST, "optional")["id"]
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("best.partial"))
    # each fold was trained once, by both ranks together: one table, printed by the main process only
    assert result.stdout.count("   oof ") == 1


def _one_process_probs(checkpoint, source, tmp_path):
    """The probabilities one process gives `source` with `checkpoint`, as inference.py computes them."""
    predict_file(
        [str(checkpoint)],
        PredictionFiles(str(source), str(tmp_path / "single.jsonl"), probs_path=str(tmp_path / "single_probs.jsonl")),
        loader=checkpoint_loader("cpu"),
    )
    return read_probs(tmp_path / "single_probs.jsonl")


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_an_fsdp_launch_is_refused_by_every_rank_before_any_work(tmp_path):
    """FSDP shards the weights each fold predicts and saves from: the processes stop at their parse with one error
    line, naming what works instead, and leave no folder."""
    out = tmp_path / "fsdp"
    result = subprocess.run(
        [
            *TWO_PROCESSES,
            "--use_fsdp",
            "train.py",
            str(QUICKSTART),
            "--output_dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]
    # each rank refuses at its parse; torchrun's agent stops the other rank when the first exits, so the second
    # line appears only when both got there first
    assert result.returncode != 0 and len(errors) in (1, 2) and len(set(errors)) == 1, errors
    assert errors[0].startswith("error: fsdp:") and "ZeRO-2" in errors[0]
    assert not out.exists()


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
# torchrun's agent and its two workers; accelerate's simple launcher and its one (`--cpu` starts one)
@pytest.mark.parametrize(("launcher_kind", "workers_started"), [("--multi_gpu", 2), ("--cpu", 1)])
def test_workers_end_when_their_launcher_is_killed(tmp_path, launcher_kind, workers_started):
    """SIGKILL of `accelerate launch` leaves no orphan: its workers get SIGTERM, end, and write no summary (on a
    cluster, orphans would keep their GPUs and write the outputs of a job that was killed)."""
    import signal
    import time

    out = tmp_path / "killed"
    launcher = subprocess.Popen(
        [
            *TWO_PROCESSES,
            launcher_kind,
            "train.py",
            str(QUICKSTART),
            "--output_dir",
            str(out),
            "--num_folds",
            "2",
            "--num_train_epochs",
            "400",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "fold_0").is_dir():  # both workers are past their start
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.5)
        workers = _children(launcher.pid)
        assert len(workers) == workers_started
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(_alive(pid) for pid in workers), "a worker outlived its launcher"
        assert not (out / "summary.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)  # whatever is left of the group, whatever the outcome


def _children(pid: int) -> list[int]:
    return [
        int(child) for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except OSError:
        return False
