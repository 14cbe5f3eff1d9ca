import importlib
import json
import os
import shutil
import subprocess as sp
import sys
from pathlib import Path

import pytest

# Tests never reach a hub: everything runs on the offline backbone and local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist the workers share the cores: each gets its share of threads (set before torch loads), as two
# torch processes with a thread per core each slow each other down many times over (thread barriers).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, threads)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_TRAIN = ROOT / "data" / "sample_train.jsonl"
SAMPLE_DEV = ROOT / "data" / "sample_dev.jsonl"
SAMPLE_TEST = ROOT / "data" / "sample_test.jsonl"
NIKL_DIR = ROOT.parent / "shared" / "data" / "nikluge-ea-2023"

LABELS = ["joy", "anticipation", "trust", "surprise", "disgust", "fear", "anger", "sadness"]

# one fold of two, one epoch, batches of 16: the quickest real training a test of a model family or a loading key needs
ONE_FOLD = ["--num_folds", "2", "--fold", "0", "--num_train_epochs", "1", "--per_device_train_batch_size", "16"]
ONE_FOLD += ["--disable_tqdm", "true", "--save_total_limit", "1"]


def nikl_row(row_id="r1", form="오늘 공연 너무 좋았다", target=("공연", 3, 5), labels=("joy",), output=None) -> dict:
    """One NIKL-format row; `target=None` gives the all-null target."""
    if target is None:
        target_obj = {"form": None, "begin": None, "end": None}
    else:
        target_obj = {"form": target[0], "begin": target[1], "end": target[2]}
    if output is None:
        output = {label: "True" if label in labels else "False" for label in LABELS}
    return {"id": row_id, "input": {"form": form, "target": target_obj}, "output": output}


def write_jsonl(path: Path, rows, raw_lines=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        for line in raw_lines:
            handle.write(line + "\n")
    return path


# the commands a test runs in-process by default: their real entry point, without a new interpreter's ~10 s of
# imports (torch, transformers, datasets); `subprocess=True` where a test needs a process of its own
SCRIPTS = {"train", "inference", "ensemble", "score", "report", "export", "distill", "post_train", "recipe"}


def run_cli(*args, cwd=ROOT, check=True, subprocess=False) -> sp.CompletedProcess:
    """`python ARGS` (a top-level script or `-m nikl_emotion`), its exit code, stdout and stderr."""
    args = tuple(map(str, args))
    if subprocess or not in_process_command(args):
        result = sp.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    else:
        result = run_in_process(args, cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def in_process_command(args: tuple[str, ...]) -> bool:
    if args[:2] == ("-m", "nikl_emotion"):
        return True
    script = Path(args[0])
    return (
        script.suffix == ".py"
        and script.stem in SCRIPTS
        and (ROOT / script.name).resolve() == (ROOT / script).resolve()
    )


def run_in_process(args: tuple[str, ...], cwd) -> sp.CompletedProcess:
    """What `python ARGS` prints and returns, run in this process: argv, the working directory, the environment,
    the root logger (the commands log to it, as `quiet_libraries` sets up) and the signal handlers are the
    command's for the call and restored after it; an uncaught exception is a traceback and exit code 1, as
    Python's own."""
    import contextlib
    import io
    import logging
    import signal
    import traceback

    if args[0] == "-m":
        from nikl_emotion.__main__ import run as command

        argv = ["nikl_emotion", *args[2:]]
    else:
        module = importlib.import_module(f"nikl_emotion.commands.{Path(args[0]).stem}")
        command, argv = module_entry_point(module), [args[0], *args[1:]]
    out, err = io.StringIO(), io.StringIO()
    saved = (dict(os.environ), sys.argv, os.getcwd(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    root, ours = logging.getLogger(), logging.getLogger("nikl_emotion")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.handlers, code = [handler], 0
    root.setLevel(logging.INFO)
    try:
        os.chdir(cwd)
        sys.argv = argv
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                command()
            except SystemExit as exited:
                code = exited.code if isinstance(exited.code, int) else (0 if exited.code is None else 1)
            except Exception:  # noqa: BLE001 - what the interpreter would print before exiting with 1
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        sys.argv = saved[1]
        os.chdir(saved[2])
        signal.signal(signal.SIGTERM, saved[3])
        signal.signal(signal.SIGINT, saved[4])
        root.handlers[:] = handlers
        root.setLevel(level)
        ours.setLevel(our_level)  # a command's --log_level is its own
    return sp.CompletedProcess([sys.executable, *args], code, out.getvalue(), err.getvalue())


def module_entry_point(module):
    from nikl_emotion.commands.cli import entry_point

    return entry_point(module.main)


def run_main(capsys, monkeypatch, script: str, *args) -> tuple[int, list[str]]:
    """A top-level command in-process, through its real entry point (what `python SCRIPT.py ARGS` runs, without a
    new interpreter's imports): (exit code, its `error:` lines)."""
    module = importlib.import_module(script)
    monkeypatch.setattr("sys.argv", [f"{script}.py", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        module.entry_point(module.main)()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    return exited.value.code, errors


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real 2-fold training run of the offline backbone on the sample data, read (never changed) by the end-to-end
    tests: built once per test session, by the first pytest-xdist worker that asks, the others waiting for it."""
    return shared_once(tmp_path_factory, "tiny_run", build_tiny_run)


def build_tiny_run(folder: Path) -> Path:
    out = folder / "out"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "30",
        "--early_stopping_patience",
        "0",
    )
    return out


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once for the whole session, whichever worker asks first (under pytest-xdist the workers'
    temporary folders share a parent); the others wait on a lock, then read what it built."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir(parents=True)
            done.write_text(str(build(folder)), encoding="utf-8")
    return Path(done.read_text(encoding="utf-8"))
