"""Every command tried as a careful (and a hostile) user would: nothing a user gave or a run produced is lost,
results always come from a file's current bytes, bad values fail before anything is written with one `error:`
line, and where the project reproduces the official task (score, the reference vote) it does so exactly."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, nikl_row, run_cli, run_main, write_jsonl

from nikl_emotion.base.errors import PipelineError, RowError

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes: to show that nothing was deleted or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. export.py never deletes what it did not write ---------------------------------------------------------------


def test_export_refuses_a_folder_that_is_not_a_previous_export(tiny_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    best = tiny_run / "fold_0" / "best"
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me", encoding="utf-8")
    before_run, before_user = snapshot(tiny_run), snapshot(user)
    for target, expected in (
        (user, "holds other files"),
        (tiny_run, "holds the checkpoint"),
        (best, "holds the checkpoint"),
        (tmp_path / "notes.txt", "not a folder"),
        (tmp_path / "notes.txt" / "onnx", "is a file"),
    ):
        if expected == "not a folder":
            target.write_text("a file", encoding="utf-8")
        code, errors = run_main(capsys, monkeypatch, "export", "--checkpoint", best, "--output", target)
        assert code == 1 and len(errors) == 1 and expected in errors[0], errors
    assert snapshot(tiny_run) == before_run and snapshot(user) == before_user
    # a previous export is replaced, and only once the new one is whole
    export = tmp_path / "onnx"
    for _ in range(2):
        assert run_main(capsys, monkeypatch, "export", "--checkpoint", best, "--output", export)[0] == 0
    assert (export / "model.onnx").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.")]


# 2. results come from the file's current bytes --------------------------------------------------------------------


def test_a_file_rewritten_with_its_old_mtime_is_read_again(tmp_path):
    from nikl_emotion.decisions.metrics import score_files
    from nikl_emotion.text.data import load_jsonl

    gold = write_jsonl(tmp_path / "gold.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("fear",))])
    pred = write_jsonl(tmp_path / "pred.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("fear",))])
    assert score_files(str(gold), str(pred))["micro_f1"] == 1.0
    stamp = os.stat(pred).st_mtime_ns
    write_jsonl(pred, [nikl_row("a", labels=("anger",)), nikl_row("b", labels=("anger",))])  # same size
    os.utime(pred, ns=(stamp, stamp))  # as cp -p, rsync -a or tar leave it
    assert score_files(str(gold), str(pred))["micro_f1"] == 0.0
    write_jsonl(pred, [nikl_row("a"), nikl_row("b")], raw_lines=["{broken"])
    os.utime(pred, ns=(stamp, stamp))
    with pytest.raises(RowError, match=r"pred\.jsonl:3: json"):
        load_jsonl(pred)


# 3. no output may be an input ---------------------------------------------------------------------------------------


def test_inference_and_ensemble_refuse_to_write_over_their_inputs(tiny_run, tmp_path, capsys, monkeypatch):
    dev = tmp_path / "dev.jsonl"
    shutil.copy(SAMPLE_DEV, dev)
    probs = tiny_run / "fold_0" / "test_probs.jsonl"
    before = snapshot(tmp_path), snapshot(tiny_run)
    best = tiny_run / "fold_0" / "best"
    same = "is the same file as"
    cases = [
        (same, "inference", "--checkpoint", best, "--input", dev, "--output", dev),
        (
            same,
            "inference",
            "--checkpoint",
            best,
            "--input",
            dev,
            "--output",
            tmp_path / "x.jsonl",
            "--probs",
            tmp_path / "x.jsonl",
        ),
        # the fold's test probabilities are also a run's own file: that refusal comes first
        ("which its command wrote", "ensemble", "--inputs", probs, "--reference", SAMPLE_TEST, "--output", probs),
        (same, "ensemble", "--inputs", probs, "--reference", dev, "--output", dev),
    ]
    for reason, script, *args in cases:
        code, errors = run_main(capsys, monkeypatch, script, *args)
        assert code == 1 and len(errors) == 1 and reason in errors[0], (args, errors)
    assert (snapshot(tmp_path), snapshot(tiny_run)) == before


def test_an_input_inside_the_runs_own_files_is_refused(tmp_path):
    from nikl_emotion.training.config_checks import parse_config

    inside = write_jsonl(tmp_path / "out" / "submission.jsonl", [nikl_row("a")])
    with pytest.raises(PipelineError, match="where the run .* writes its own files"):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "out"), "--test_file", str(inside)])


# 4. several processes on one output_dir -------------------------------------------------------------------------


def _train(out, *args, env=None):
    return subprocess.Popen(
        [
            sys.executable,
            "train.py",
            str(QUICKSTART),
            "--output_dir",
            str(out),
            "--num_folds",
            "2",
            "--disable_tqdm",
            "true",
            *map(str, args),
        ],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _one_thread_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_two_folds_side_by_side_share_one_output_dir(tmp_path):
    out = tmp_path / "run"
    runs = [_train(out, "--fold", k, "--num_train_epochs", "1", env=_one_thread_env()) for k in (0, 1)]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [r[1][-2000:] for r in results]
    assert (out / "summary.json").exists() and (out / "submission.jsonl").exists()
    assert json.loads((out / "backbone" / "backbone.json").read_text())["model_name_or_path"] == "offline:electra-tiny"


def test_a_second_copy_of_a_running_run_is_refused_cleanly(tmp_path):
    out = tmp_path / "run"
    first = _train(out, "--num_train_epochs", "200", "--early_stopping_patience", "0", env=_one_thread_env())
    lock = out / ".fold_1.lock"  # the run locks all its folds at start, and writes its pid into each lock file
    try:
        deadline = time.time() + 300
        while not (lock.exists() and lock.read_text() == str(first.pid)):
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.5)
        for extra in ([], ["--fold", "1"]):
            second = run_cli(
                "train.py",
                QUICKSTART,
                "--output_dir",
                out,
                "--num_folds",
                "2",
                "--num_train_epochs",
                "200",
                "--early_stopping_patience",
                "0",
                *extra,
                check=False,
            )
            errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
            assert second.returncode == 1 and len(errors) == 1 and "in use by another process" in errors[0], (
                second.stderr[-2000:]
            )
            assert f"pid {first.pid}" in errors[0] and "Traceback" not in second.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.communicate()


# 5. keys are spelled out --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_line, argv, key",
    [
        ("over: true", [], "over"),
        ("thresh: 0.3", [], "thresh"),
        ("", ["--num_fold", "3"], "num_fold"),
    ],
)
def test_abbreviated_keys_are_refused_naming_the_key(tmp_path, yaml_line, argv, key):
    from nikl_emotion.training.config_checks import parse_config

    config = tmp_path / "c.yaml"
    config.write_text(QUICKSTART.read_text(encoding="utf-8") + "\n" + yaml_line + "\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=rf"unknown key '{key}' \(did you mean"):
        parse_config([str(config), "--output_dir", str(tmp_path / "o"), *argv])


def test_a_billion_laughs_yaml_is_refused_at_once(tmp_path):
    from nikl_emotion.training.config_checks import parse_config

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    start = time.time()
    with pytest.raises(PipelineError, match="nested lists"):
        parse_config([str(config)])
    assert time.time() - start < 5


# 6. values that used to crash mid-run (and then block the retry) ------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "-1"], "seed: must be >= 0"),
        (["--learning_rate", "-1"], r"learning_rate: must be in \(0, 1\]"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size: must be at least 1"),
        (["--test_file", ""], "test_file: '': file not found"),
        (["--num_train_epochs", "0"], "num_train_epochs: must be a finite number > 0"),
    ],
)
def test_bad_training_values_fail_before_anything_is_written(tmp_path, args, message):
    from nikl_emotion.training.config_checks import parse_config

    with pytest.raises(PipelineError, match=message):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "o"), *args])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rows, folds", [(3, 5), (1, 2)])
def test_more_folds_than_rows_is_refused_before_writing(tmp_path, rows, folds):
    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    train = write_jsonl(tmp_path / "small.jsonl", [nikl_row(f"r{i}") for i in range(rows)])
    with pytest.raises(PipelineError, match=f"num_folds: {folds} folds need at least as many rows; .* hold {rows}"):
        run_training(
            parse_config(
                [
                    str(QUICKSTART),
                    "--train_files",
                    str(train),
                    "--output_dir",
                    str(tmp_path / "o"),
                    "--num_folds",
                    str(folds),
                ]
            )
        )
    assert not (tmp_path / "o").exists()


def test_a_run_that_failed_during_set_up_does_not_block_the_corrected_command(tmp_path):
    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    out = tmp_path / "o"
    common = [str(QUICKSTART), "--output_dir", str(out), "--num_folds", "2", "--fold", "0", "--num_train_epochs", "1"]
    with pytest.raises(PipelineError, match="max_seq_length: 600 is more than the 512 tokens"):
        run_training(parse_config([*common, "--max_seq_length", "600"]))
    assert (out / "config.yaml").exists()  # written, but the run produced nothing
    run_training(parse_config([*common, "--max_seq_length", "64"]))
    assert (out / "fold_0" / "done.json").exists()
    # now it holds results: another configuration is refused, naming the key
    with pytest.raises(PipelineError, match="another configuration .*max_seq_length"):
        run_training(parse_config([*common, "--max_seq_length", "32"]))


def test_a_changed_training_file_is_refused_by_train_and_report(tmp_path, capsys, monkeypatch):
    from nikl_emotion.training.config_checks import parse_config
    from nikl_emotion.training.kfold import run_training

    train = tmp_path / "train.jsonl"
    shutil.copy(SAMPLE_TRAIN, train)
    out = tmp_path / "o"
    argv = [
        str(QUICKSTART),
        "--train_files",
        str(train),
        "--output_dir",
        str(out),
        "--num_folds",
        "2",
        "--num_train_epochs",
        "1",
        "--test_file",
        str(SAMPLE_TEST),
    ]
    run_training(parse_config(argv))
    lines = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one row fewer, same path
    with pytest.raises(PipelineError, match="train.jsonl changed since this run's folds were trained"):
        run_training(parse_config(argv))
    code, errors = run_main(capsys, monkeypatch, "report", out)
    assert code == 1 and len(errors) == 1 and "changed since this run's folds were trained" in errors[0]


# 7. silently wrong output ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "nan", "1"], "weights: expected 2 finite positive numbers"),
        (["--weights", "1", "-1"], "weights: expected 2 finite positive numbers"),
        (["--min_votes", "nan"], "min_votes: must be a number in"),
        (["--min_votes", "-3"], "min_votes: must be a number in"),
        (["--min_votes", "99"], "min_votes: must be a number in"),
    ],
)
def test_nonsense_vote_options_are_refused(tiny_run, tmp_path, capsys, monkeypatch, extra, message):
    inputs = [tiny_run / f"fold_{k}" / "test_probs.jsonl" for k in range(2)]
    out = tmp_path / "voted.jsonl"
    code, errors = run_main(
        capsys, monkeypatch, "ensemble", "--inputs", *inputs, "--reference", SAMPLE_TEST, "--output", out, *extra
    )
    assert code == 1 and len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


def _damaged_copy(best, tmp_path, damage):
    copy = tmp_path / "damaged"
    shutil.copytree(best, copy)
    damage(copy)
    return copy


def _set_preprocessing(key, value):
    def damage(folder):
        data = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
        if key.startswith("cleaning."):
            data["cleaning"][key.split(".")[1]] = value
        else:
            data[key] = value
        (folder / "preprocessing.json").write_text(json.dumps(data), encoding="utf-8")

    return damage


DAMAGED_CHECKPOINTS = {
    "no tokenizer files": (
        lambda f: [p.unlink() for p in f.iterdir() if p.name.startswith(("tokenizer", "vocab", "special"))],
        "no tokenizer files",
    ),
    "config.json not JSON": (
        lambda f: (f / "config.json").write_text("{not json", encoding="utf-8"),
        "cannot load the checkpoint",
    ),
    "truncated weights": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
        "cannot load the checkpoint",
    ),
    "cleanse as a string": (
        _set_preprocessing("cleaning.cleanse", "false"),
        "cleaning.cleanse: expected true or false",
    ),
    "max_seq_length a string": (_set_preprocessing("max_seq_length", "64"), "max_seq_length: expected a whole number"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_with_one_line(tiny_run, tmp_path, capsys, monkeypatch, kind):
    damage, message = DAMAGED_CHECKPOINTS[kind]
    checkpoint = _damaged_copy(tiny_run / "fold_0" / "best", tmp_path, damage)
    out = tmp_path / "sub.jsonl"
    code, errors = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        checkpoint,
        "--input",
        SAMPLE_DEV,
        "--output",
        out,
        "--device",
        "cpu",
    )
    assert code == 1 and len(errors) == 1 and message in errors[0] and str(checkpoint) in errors[0], errors
    assert not out.exists()


def test_nfd_hangul_survives_cleaning_with_its_target():
    from nikl_emotion.text.cleaning import CleaningOptions, clean_text

    text, begin, end = "오늘 공연 너무 좋았다 ㅋㅋㅋㅋ", 3, 5
    nfd_text = unicodedata.normalize("NFD", text)
    nfd_begin = len(unicodedata.normalize("NFD", text[:begin]))
    nfd_end = nfd_begin + len(unicodedata.normalize("NFD", text[begin:end]))
    assert clean_text(nfd_text, (nfd_begin, nfd_end), CleaningOptions()) == clean_text(
        text, (begin, end), CleaningOptions()
    )
    assert clean_text(text, (begin, end), CleaningOptions())[0] == "오늘 공연 너무 좋았다 ㅋㅋ"


def test_a_late_target_keeps_its_markers_under_truncation(tmp_path):
    from nikl_emotion.backends.backbone import build_offline_backbone, load_tokenizer
    from nikl_emotion.text.encoding import TARGET_END, TARGET_START, tokenize_batch

    texts = [json.loads(line)["input"]["form"] for line in SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()]
    folder = build_offline_backbone(texts, str(tmp_path / "bb"), "offline:electra-tiny", vocab_size=1000)
    tokenizer = load_tokenizer(folder, with_markers=True)
    text = " ".join(texts[:30]) + " 마지막 공연"
    batch = {"text": [text], "target": ["공연"], "target_begin": [len(text) - 2], "target_end": [len(text)]}
    encoded = tokenize_batch(batch, tokenizer, "marker", 32)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    assert len(tokens) <= 32 and TARGET_START in tokens and TARGET_END in tokens
    assert tokens[tokens.index(TARGET_START) + 1 : tokens.index(TARGET_END)] == tokenizer.tokenize("공연")
    assert tokens[0] == tokenizer.cls_token and tokens[-1] == tokenizer.sep_token


# 8. one error line instead of a traceback -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["a folder", "under a file", "read-only folder"])
def test_a_bad_output_path_fails_before_any_work(tiny_run, tmp_path, capsys, monkeypatch, kind):
    if kind == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    blocker = tmp_path / "blocker"
    if kind == "a folder":
        output = tmp_path / "adir"
        output.mkdir()
    elif kind == "under a file":
        blocker.write_text("x", encoding="utf-8")
        output = blocker / "sub.jsonl"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        output = locked / "sub.jsonl"
    probs = tmp_path / "probs.jsonl"
    code, errors = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        tiny_run / "fold_0" / "best",
        "--input",
        SAMPLE_DEV,
        "--output",
        output,
        "--probs",
        probs,
        "--device",
        "cpu",
    )
    assert code == 1 and len(errors) == 1 and str(output) in errors[0]
    assert not probs.exists()  # nothing was predicted, so nothing was written


RAW_BAD_LINES = {
    "lone surrogate in the text": (
        '{"id": "x", "input": {"form": "a\\ud800b", "target": null}, "output": ""}',
        "input",
    ),
    "lone surrogate in the id": ('{"id": "\\udfff", "input": {"form": "ab", "target": null}, "output": ""}', "id"),
    "200,000-deep array": ("[" * 200_000 + "]" * 200_000, "json"),
}


@pytest.mark.parametrize("kind", sorted(RAW_BAD_LINES))
def test_hostile_json_lines_are_named(tmp_path, capsys, monkeypatch, kind):
    line, field = RAW_BAD_LINES[kind]
    bad = write_jsonl(tmp_path / "bad.jsonl", [nikl_row("a")], raw_lines=[line])
    out = tmp_path / "sub.jsonl"
    code, errors = run_main(
        capsys, monkeypatch, "inference", "--checkpoint", ROOT / "missing", "--input", bad, "--output", out
    )
    assert code == 1 and errors and errors[0].startswith(f"error: {bad}:2: {field}: "), errors


@pytest.mark.parametrize("content", ['"0.5"', "[0.5]", "{}", '{"per_label": {"joy": "x"}}'])
def test_a_malformed_thresholds_file_is_one_line(tiny_run, tmp_path, capsys, monkeypatch, content):
    path = tmp_path / "thresholds.json"
    path.write_text(content, encoding="utf-8")
    inputs = [tiny_run / f"fold_{k}" / "test_probs.jsonl" for k in range(2)]
    code, errors = run_main(
        capsys,
        monkeypatch,
        "ensemble",
        "--inputs",
        *inputs,
        "--reference",
        SAMPLE_TEST,
        "--output",
        tmp_path / "o.jsonl",
        "--thresholds",
        path,
    )
    assert code == 1 and len(errors) == 1 and str(path) in errors[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "0"], "--batch_size: must be at least 1"),
        (["--device", "cuda:7"], "--device: cuda:7 is not available"),
        (["--device", "toaster"], "--device: 'toaster' is not a device"),
    ],
)
def test_bad_inference_options_are_one_line(tiny_run, tmp_path, capsys, monkeypatch, args, message):
    import torch

    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, errors = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        tiny_run / "fold_0" / "best",
        "--input",
        SAMPLE_DEV,
        "--output",
        tmp_path / "o.jsonl",
        *args,
    )
    assert code == 1 and len(errors) == 1 and message in errors[0], errors


# 9. resources ---------------------------------------------------------------------------------------------------


def test_a_giant_row_is_cut_before_tokenizing(tmp_path):
    from transformers import AutoTokenizer

    from nikl_emotion.text.encoding import CHARS_PER_TOKEN_BOUND, bounded, tokenize_batch

    texts = [json.loads(line)["input"]["form"] for line in SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()]
    giant = (" ".join(texts) + " ") * 400  # ~5 MB of text
    cut = bounded(giant, None, None, None, "pair", 64 * CHARS_PER_TOKEN_BOUND)[0]
    assert len(cut) == 64 * CHARS_PER_TOKEN_BOUND and giant.startswith(cut)
    marked = bounded(giant, "공연", len(giant) - 10, len(giant) - 8, "marker", 1000)
    assert len(marked[0]) == 1000 and marked[0][marked[2] : marked[3]] == giant[-10:-8]
    from nikl_emotion.backends.backbone import build_offline_backbone

    folder = build_offline_backbone(texts, str(tmp_path / "bb"), "offline:electra-tiny", vocab_size=1000)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    start = time.time()
    batch = {"text": [giant], "target": [None], "target_begin": [None], "target_end": [None]}
    encoded = tokenize_batch(batch, tokenizer, "pair", 64)
    assert time.time() - start < 10  # the whole text took minutes and gigabytes
    assert encoded["input_ids"][0] == tokenizer(giant[:5000], truncation=True, max_length=64)["input_ids"]


# 10. leftovers and file modes ---------------------------------------------------------------------------------------


def test_a_killed_writers_temporaries_are_removed_and_modes_follow_the_umask(tmp_path):
    from nikl_emotion.base.fileio import write_text_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.txt.{dead.stdout.strip()}.abc.tmp"
    live = tmp_path / f".out.txt.{os.getppid()}.abc.tmp"  # a running process's: left alone
    stale.write_text("half", encoding="utf-8")
    live.write_text("busy", encoding="utf-8")
    old_umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.txt", "whole")
        assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o644
        os.chmod(tmp_path / "out.txt", 0o640)
        write_text_atomic(tmp_path / "out.txt", "again")
        assert stat.S_IMODE(os.stat(tmp_path / "out.txt").st_mode) == 0o640  # an existing file keeps its mode
    finally:
        os.umask(old_umask)
    assert not stale.exists() and live.exists() and (tmp_path / "out.txt").read_text() == "again"


def test_a_folder_written_whole_gets_the_mode_makedirs_would(tmp_path):
    """best/ and export.py's folders are built under a temporary name (mkdtemp: 0700) and swapped in: they get
    0777 minus the umask, as `os.makedirs` would give (a shared server's other users read the model), and a folder
    they replace keeps its mode."""
    from nikl_emotion.base.fileio import atomic_folder

    old_umask = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "export") as staging:
            (Path(staging) / "model.onnx").write_bytes(b"x")
        assert stat.S_IMODE(os.stat(tmp_path / "export").st_mode) == 0o755
        os.chmod(tmp_path / "export", 0o750)
        with atomic_folder(tmp_path / "export") as staging:
            (Path(staging) / "model.onnx").write_bytes(b"y")
        assert stat.S_IMODE(os.stat(tmp_path / "export").st_mode) == 0o750
    finally:
        os.umask(old_umask)
    assert (tmp_path / "export" / "model.onnx").read_bytes() == b"y"


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from nikl_emotion.commands.cli import entry_point\n"
        "from nikl_emotion.base.fileio import atomic_writer\n"
        "def main(argv):\n"
        f"    with atomic_writer({str(tmp_path / 'out.txt')!r}) as handle:\n"
        "        handle.write('part')\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        handle.write('never')\n"
        "entry_point(main)()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_swallowed_by_a_bare_except_still_stops_the_command_and_unwinds(tmp_path):
    """A library's bare `except:` (datasets' fingerprint hashing) swallows the SystemExit SIGTERM raises: the signal
    comes again until the exit reaches the command, which then unwinds (its temporary removed), code 143."""
    script = (
        "import os, signal, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from nikl_emotion.commands.cli import entry_point\n"
        "from nikl_emotion.base.fileio import atomic_writer\n"
        "def main(argv):\n"
        f"    with atomic_writer({str(tmp_path / 'out.txt')!r}) as handle:\n"
        "        try:\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "            time.sleep(0.5)\n"
        "        except:\n"
        "            print('swallowed', flush=True)\n"
        "        for _ in range(300):\n"
        "            time.sleep(0.1)\n"
        "            handle.write('x')\n"
        "entry_point(main)()\n"
    )
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM and "swallowed" in result.stdout, result.stderr
    assert time.monotonic() - began < 15 and list(tmp_path.iterdir()) == []


def test_a_bare_cr_inside_a_line_is_not_a_line_break(tmp_path):
    from nikl_emotion.text.data import load_jsonl

    row = nikl_row("a", form="첫 줄\r같은 줄", target=None)
    path = tmp_path / "cr.jsonl"
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n" + "{broken\n").encode("utf-8"))
    with pytest.raises(RowError, match=r"cr\.jsonl:2: json"):
        load_jsonl(path)
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    assert load_jsonl(path)["text"] == ["첫 줄\r같은 줄"]


# 11. score exactly as the official scorer --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "0", True, "TRUE", "yes"])
def test_score_refuses_values_the_official_scorer_reads_differently(tmp_path, capsys, monkeypatch, value):
    gold = write_jsonl(tmp_path / "gold.jsonl", [nikl_row("a"), nikl_row("b")])
    pred_row = nikl_row("b", output={label: "False" for label in LABELS} | {"joy": value})
    pred = write_jsonl(tmp_path / "pred.jsonl", [nikl_row("a"), pred_row])
    code, errors = run_main(capsys, monkeypatch, "score", gold, pred)
    if value == "yes":  # not boolean-like at all: the loader names it
        assert code == 1 and errors[0].startswith(f"error: {pred}:2: output.joy")
        return
    assert code == 1 and len(errors) == 1 and errors[0].startswith(f"error: {pred}:2: output.joy: ")
    assert "official scorer" in errors[0]


def test_score_refuses_labels_in_another_order_and_accepts_lowercase(tmp_path, capsys, monkeypatch):
    gold = write_jsonl(tmp_path / "gold.jsonl", [nikl_row("a", labels=("joy",)), nikl_row("b", labels=("fear",))])
    reordered = {label: "True" if label == "joy" else "False" for label in reversed(LABELS)}
    pred = write_jsonl(tmp_path / "pred.jsonl", [nikl_row("a", output=reordered), nikl_row("b", labels=("fear",))])
    code, errors = run_main(capsys, monkeypatch, "score", gold, pred)
    assert code == 1 and errors[0].startswith(f"error: {pred}:1: output: labels in another order")
    lower = {label: "true" if label == "joy" else "false" for label in LABELS}
    pred = write_jsonl(tmp_path / "pred2.jsonl", [nikl_row("a", output=lower), nikl_row("b", labels=("fear",))])
    from nikl_emotion.decisions.metrics import score_files

    assert score_files(str(gold), str(pred))["micro_f1"] == 1.0  # the official scorer counts "true" too


# 12. the reference's vote, exactly ---------------------------------------------------------------------------------


def reference_vote_literal(decisions: list[np.ndarray]) -> np.ndarray:
    """The reference pipeline's rule, row by row, as its inference script spells it."""
    n, rows = len(decisions), len(decisions[0])
    out = np.zeros((rows, 8), dtype=bool)
    for r in range(rows):
        counts = [sum(int(d[r][j]) for d in decisions) for j in range(8)]
        if n <= 3:
            if max(counts) == 0:
                out[r][0] = True  # nothing voted: joy
            else:
                out[r] = [c == max(counts) for c in counts]
        else:
            out[r] = [c >= n / 2 for c in counts]
    return out


@pytest.mark.parametrize("models", [2, 3, 4, 5])
def test_reference_rule_reproduces_the_reference_exactly(models):
    from nikl_emotion.decisions.voting import DecisionRule, hard_vote

    rng = np.random.default_rng(models)
    decisions = [rng.random((400, 8)) < 0.2 for _ in range(models)]
    decisions[0][:5] = False  # rows where nobody votes (with few models) and ties of every kind
    for d in decisions:
        d[:3] = False
    expected = reference_vote_literal(decisions)
    np.testing.assert_array_equal(hard_vote(decisions, DecisionRule(vote_rule="reference")), expected)
    np.testing.assert_array_equal(
        hard_vote(decisions, DecisionRule(vote_rule="reference", fallback=True), mean_probs=rng.random((400, 8))),
        expected,
    )
    if models > 3:
        assert not expected.any(axis=1).all()  # rows left empty, as the reference leaves them
    else:
        assert expected[:3, 0].all() and not expected[:3, 1:].any()  # joy alone when nobody voted


def test_reference_rule_refuses_weights():
    from nikl_emotion.decisions.voting import DecisionRule, hard_vote

    with pytest.raises(PipelineError, match="takes no weights"):
        hard_vote([np.ones((1, 8), bool)] * 2, DecisionRule(vote_rule="reference", weights=(1, 2)))
