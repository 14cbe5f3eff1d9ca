"""Prediction in chunks, split across the processes of `accelerate launch`: the same bytes whatever the number of
processes, every row once and in input order, nothing written when a row is bad or the job is killed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLE_TEST, nikl_row, run_cli, write_jsonl

from nikl_emotion.base.errors import RowError
from nikl_emotion.text.data import load_jsonl, read_jsonl_chunks, scan_jsonl

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH += ["--dynamo_backend", "no"]


def test_chunks_cover_the_file_in_order_and_each_process_reads_its_own(tmp_path):
    rows = [nikl_row(f"r{i}", output="") for i in range(10)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows[:5], raw_lines=["", "   "])  # blank lines are not rows
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[5:])
    chunks = list(read_jsonl_chunks(path, 3))
    assert [number for number, _ in chunks] == [0, 1, 2, 3]
    assert [row_id for _, chunk in chunks for row_id in chunk["id"].to_pylist()] == [f"r{i}" for i in range(10)]
    assert chunks[1][1]["line"].to_pylist() == [4, 5, 8]  # the file's own line numbers, past the blank lines
    odd = list(read_jsonl_chunks(path, 3, owns=lambda number: number % 2 == 1))
    assert [(number, chunk["id"].to_pylist()) for number, chunk in odd] == [(1, ["r3", "r4", "r5"]), (3, ["r9"])]
    assert scan_jsonl(path) == (10, 0)


def test_the_scan_refuses_what_load_jsonl_refuses_and_names_the_line(tmp_path):
    rows = [nikl_row(f"r{i}") for i in range(4)] + [nikl_row("r1")]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(RowError, match=r"dup.jsonl:5.*duplicate id 'r1' \(first at .*dup.jsonl:2\)"):
        scan_jsonl(path)
    assert scan_jsonl(write_jsonl(tmp_path / "ok.jsonl", rows[:4])) == (4, 4)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:3], raw_lines=['{"id": "x", "input": {"form": "a"}}'])
    with pytest.raises(RowError, match=r"bad.jsonl:4.*input.target"):
        scan_jsonl(bad)
    with pytest.raises(RowError, match="is a folder, not a jsonl file"):
        scan_jsonl(tmp_path)


def _inference(run, source, output, *extra, launch=()):
    command = [*launch, "inference.py"] if launch else [sys.executable, "inference.py"]
    command += ["--run", str(run), "--input", str(source), "--output", str(output), *map(str, extra)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_two_processes_write_the_bytes_of_one(tiny_run, tmp_path):
    """Rows in chunks of 7 over 2 CPU processes (gloo): the submission and the probabilities are byte for byte those
    of one process with the same chunks, and the submission is the run's own for its test file."""
    one = _inference(
        tiny_run, SAMPLE_TEST, tmp_path / "one.jsonl", "--probs", tmp_path / "one_p.jsonl", "--chunk_size", 7
    )
    assert one.returncode == 0, one.stderr[-3000:]
    env_launch = [*LAUNCH, "--multi_gpu", "--num_processes", "2"]
    two = _inference(
        tiny_run,
        SAMPLE_TEST,
        tmp_path / "two.jsonl",
        "--probs",
        tmp_path / "two_p.jsonl",
        "--chunk_size",
        7,
        launch=env_launch,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 process(es)" in two.stderr and two.stdout.count("wrote 100 rows") == 1
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "two_p.jsonl").read_bytes() == (tmp_path / "one_p.jsonl").read_bytes()
    assert (tmp_path / "one.jsonl").read_bytes() == (tiny_run / "submission.jsonl").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["one.jsonl", "one_p.jsonl", "two.jsonl", "two_p.jsonl"]  # no scratch


def test_a_bad_row_at_the_end_stops_the_job_before_any_output(tiny_run, tmp_path):
    rows = load_jsonl(SAMPLE_TEST, "optional")
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [json.loads(f'{{"id": {json.dumps(i)}, "input": {j}}}') for i, j in zip(rows["id"], rows["input_json"])],
        raw_lines=['{"id": "last", "input": {"form": "끝", "target": {"form": "x", "begin": 0, "end": 9}}}'],
    )
    result = run_cli(
        "inference.py", "--run", tiny_run, "--input", source, "--output", tmp_path / "out.jsonl", check=False
    )
    assert result.returncode == 1 and "in.jsonl:101" in result.stderr and "outside the text" in result.stderr
    result = run_cli(
        "inference.py", "--run", tiny_run, "--input", tmp_path, "--output", tmp_path / "o.jsonl", check=False
    )
    assert result.returncode == 1 and "is a folder, not a jsonl file" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_job_leaves_no_output_and_its_scratch_goes(tiny_run, tmp_path, stop):
    """Stopped mid-way (SIGTERM: a scheduler, Ctrl-C; SIGKILL: out of memory) the output never appears; SIGTERM
    removes the scratch folder at once, and the next job writing the same output removes what SIGKILL left."""
    source = tmp_path / "big.jsonl"
    lines = SAMPLE_TEST.read_text(encoding="utf-8").splitlines()
    with open(source, "w", encoding="utf-8") as handle:
        for copy in range(200):  # 20,000 rows: the job must still be running a second after its first chunk
            for line in lines:
                row = json.loads(line)
                handle.write(json.dumps({**row, "id": f"{copy}-{row['id']}"}, ensure_ascii=False) + "\n")
    output = tmp_path / "out" / "labels.jsonl"
    command = [sys.executable, "inference.py", "--run", str(tiny_run), "--input", str(source), "--output", str(output)]
    job = subprocess.Popen([*command, "--chunk_size", "50", "--batch_size", "8"], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(output.parent.glob(".labels.jsonl.*.shards/checkpoint0.rank0.npy")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    job.send_signal(stop)
    job.wait(timeout=60)
    assert job.returncode != 0
    left = os.listdir(output.parent)
    if stop == signal.SIGTERM:
        assert left == []
    else:
        assert len(left) == 1 and left[0].endswith(".shards")
    small = write_jsonl(tmp_path / "small.jsonl", [nikl_row("a", output="")])
    finished = run_cli("inference.py", "--run", tiny_run, "--input", small, "--output", output)
    assert finished.returncode == 0 and os.listdir(output.parent) == ["labels.jsonl"]


def test_the_default_chunk_depends_on_the_file_alone_and_shares_it_fairly():
    from nikl_emotion.runs.streaming import Processes, _Chunks, chunk_size_for

    assert [chunk_size_for(rows) for rows in (100, 40_000, 1_000_000, 10**8)] == [2048, 2048, 31250, 65536]
    for rows in (10_000, 40_000, 1_000_000):
        chunks = _Chunks("unused.jsonl", chunk_size_for(rows), rows)
        for world in (w for w in (2, 4, 8) if rows >= 4096 * w):  # a few thousand rows each, or more
            shares = [chunks.share(Processes(rank, world)) for rank in range(world)]
            assert sum(shares) == rows and max(shares) <= 1.5 * min(shares)  # several chunks each: none idles


def test_a_runs_folds_encode_each_chunk_once(tiny_run, tmp_path, monkeypatch):
    import nikl_emotion.backends.classifier as classifier_module
    from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_file, predict_run_file

    calls, stored = [], []
    real, real_write = classifier_module.encode, classifier_module.write_arrow
    monkeypatch.setattr(classifier_module, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(classifier_module, "write_arrow", lambda *a: stored.append(a[0]) or real_write(*a))
    files = PredictionFiles(str(SAMPLE_TEST), str(tmp_path / "out.jsonl"), chunk_size=30)
    assert predict_run_file(str(tiny_run), files) == 100
    assert len(calls) == 4  # 4 chunks of 30 rows, 2 folds: each chunk encoded once
    assert len(stored) == 8  # by the first fold, for the second: each chunk cleaned and encoded
    # one checkpoint: nothing is kept for a checkpoint that never comes
    calls.clear(), stored.clear()
    files = PredictionFiles(str(SAMPLE_TEST), str(tmp_path / "one.jsonl"), chunk_size=30)
    predict_file([str(tiny_run / "fold_0" / "best")], files, loader=checkpoint_loader("cpu"))
    assert len(calls) == 4 and stored == []
    os.remove(tmp_path / "one.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == (tiny_run / "submission.jsonl").read_bytes()
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_predicting_does_not_import_what_only_training_needs(tiny_run, tmp_path):
    """A predicting process (inference.py, serve, a replica of a sharded job) pays its imports at every start:
    the Trainer's modules (and through them peft and bitsandbytes) and scikit-learn cost it ~4 s of ~14 s on
    2 cores (BENCHMARKS.md, issue 47), and prediction uses none of them."""
    argv = ["--run", str(tiny_run), "--input", str(SAMPLE_TEST), "--output", str(tmp_path / "o.jsonl")]
    script = (
        "import sys\n"
        "from nikl_emotion.commands.inference import main\n"
        f"main({argv!r})\n"
        "heavy = ('transformers.trainer', 'transformers.training_args', 'peft', 'bitsandbytes', 'sklearn')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o.jsonl").read_bytes() == (tiny_run / "submission.jsonl").read_bytes()
    assert done.stdout.strip().splitlines()[-1] == "[]"
