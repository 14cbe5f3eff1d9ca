import importlib
import json
import os
import subprocess
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


def run_cli(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


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
    """A real 2-fold training run of the offline backbone on the sample data (shared by the end-to-end tests)."""
    out = tmp_path_factory.mktemp("run") / "out"
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
