"""Loading and validating NIKL jsonl: good files load, bad rows stop the run naming file, line and field."""

import json

import numpy as np
import pytest
from conftest import LABELS, ROOT, SAMPLE_TEST, SAMPLE_TRAIN, nikl_row, run_cli, write_jsonl

from nikl_emotion.base.errors import RowError
from nikl_emotion.text.data import load_jsonl, load_jsonl_files


def test_sample_files_load_with_label_order(tmp_path):
    rows = load_jsonl(SAMPLE_TRAIN)
    first = json.loads(SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()[0])
    expected = [1.0 if first["output"][label] == "True" else 0.0 for label in LABELS]
    assert rows[0]["labels"] == expected
    assert rows[0]["id"] == first["id"] and rows[0]["line"] == 1
    assert np.asarray(rows["labels"]).shape == (len(rows), 8)


def test_train_and_test_schemas_load_together(tmp_path):
    """A labelled row (output object) and a test row (output "") in one file: no Arrow type error."""
    path = write_jsonl(tmp_path / "mixed.jsonl", [nikl_row("a"), {**nikl_row("b", target=None), "output": ""}])
    rows = load_jsonl(path, "optional")
    assert rows["labels"][0][0] == 1.0 and rows["labels"][1] is None
    assert rows["target"][1] is None and rows["target"][0] == "공연"
    assert json.loads(rows["input_json"][0]) == nikl_row("a")["input"]


def test_bom_crlf_and_blank_lines_are_harmless(tmp_path):
    path = tmp_path / "crlf.jsonl"
    lines = [json.dumps(nikl_row(f"r{i}"), ensure_ascii=False) for i in range(3)]
    path.write_bytes(("\ufeff" + "\r\n".join(lines[:2]) + "\r\n\r\n" + lines[2] + "\n\n").encode("utf-8"))
    rows = load_jsonl(path)
    assert rows["id"] == ["r0", "r1", "r2"]
    assert rows["line"] == [1, 2, 4]


BAD_ROWS = {
    "invalid json": ('{"id": "x", "input": ', "json", "invalid JSON"),
    "missing id": (json.dumps({k: v for k, v in nikl_row().items() if k != "id"}), "id", "missing"),
    "missing form": (
        json.dumps({**nikl_row(), "input": {"target": nikl_row()["input"]["target"]}}),
        "input.form",
        "missing",
    ),
    "missing target": (json.dumps({**nikl_row(), "input": {"form": "글"}}), "input.target", "missing"),
    "bad label value": (json.dumps(nikl_row(output={**nikl_row()["output"], "fear": "maybe"})), "output.fear", "maybe"),
    "missing label": (json.dumps(nikl_row(output={k: "False" for k in LABELS[:7]})), "output", "missing sadness"),
    "misspelled label": (
        json.dumps(nikl_row(output={**{k: "False" for k in LABELS[1:]}, "joyy": "True"})),
        "output",
        "unknown joyy",
    ),
    "misaligned target": (json.dumps(nikl_row(target=("공연", 0, 2))), "input.target", "does not match"),
    "target out of range": (json.dumps(nikl_row(target=("공연", 30, 32))), "input.target", "outside the text"),
    "half-null target": (
        json.dumps({**nikl_row(), "input": {"form": "글", "target": {"form": None, "begin": 0, "end": None}}}),
        "input.target",
        "all null",
    ),
    "empty output in train": (json.dumps({**nikl_row(), "output": ""}), "output", "no labels"),
    "number as form": (
        json.dumps({**nikl_row(), "input": {"form": 42, "target": None}}),
        "input.form",
        "not a non-empty string",
    ),
    "list as target": (
        json.dumps({**nikl_row(), "input": {"form": "글", "target": ["글", 0, 1]}}),
        "input.target",
        "expected an object",
    ),
    "begin after end": (json.dumps(nikl_row(target=("", 5, 3))), "input.target", "begin 5 is after end 3"),
    "number as id": (json.dumps({**nikl_row(), "id": 7}), "id", "not a non-empty string"),
    "missing output": (json.dumps({k: v for k, v in nikl_row().items() if k != "output"}), "output", "missing"),
    "row not an object": ("[1, 2]", "row", "expected a JSON object"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_names_file_line_and_field(tmp_path, kind):
    line, field, words = BAD_ROWS[kind]
    path = write_jsonl(tmp_path / "bad.jsonl", [nikl_row("ok1"), nikl_row("ok2")], raw_lines=[line])
    with pytest.raises(RowError) as caught:
        load_jsonl(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: {field}: "), message
    assert words in message


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [nikl_row("a"), nikl_row("b"), nikl_row("a")])
    with pytest.raises(RowError, match=r"dup\.jsonl:3: id: duplicate id 'a' \(first at .*dup\.jsonl:1\)"):
        load_jsonl(path)


def test_duplicate_id_across_files(tmp_path):
    first = write_jsonl(tmp_path / "train.jsonl", [nikl_row("a"), nikl_row("b")])
    second = write_jsonl(tmp_path / "dev.jsonl", [nikl_row("c"), nikl_row("b")])
    with pytest.raises(RowError, match=r"dev\.jsonl:2: id: duplicate id 'b' \(first at .*train\.jsonl:2\)"):
        load_jsonl_files([str(first), str(second)])


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(RowError, match="no rows"):
        load_jsonl(path)


def test_test_file_rows_have_no_labels():
    rows = load_jsonl(SAMPLE_TEST, "optional")
    assert all(labels is None for labels in rows["labels"])


def test_bad_training_file_exits_with_one_line_and_writes_nothing(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [nikl_row("a")], raw_lines=[json.dumps(nikl_row("b", target=("공연", 0, 2)))]
    )
    out = tmp_path / "out"
    result = run_cli(
        "train.py", ROOT / "configs" / "quickstart.yaml", "--train_files", bad, "--output_dir", out, check=False
    )
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error_lines == [f"error: {bad}:2: input.target: form '공연' does not match the text at [0, 2): '오늘'"]
    assert not out.exists()


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(nikl_row("a"), ensure_ascii=False).encode("utf-8")
    path.write_bytes(good + b"\n" + json.dumps(nikl_row("b")).encode("utf-8").replace(b"\\uc624", b"\xbf\xf6") + b"\n")
    with pytest.raises(RowError, match=r"latin1\.jsonl:2: encoding: not valid UTF-8"):
        load_jsonl(path)


def test_a_huge_line_is_accepted(tmp_path):
    form = "아주 긴 글 " * 150_000  # ~1 MB of text in one row
    path = write_jsonl(tmp_path / "huge.jsonl", [nikl_row("a"), nikl_row("b", form=form, target=("아주", 0, 2))])
    rows = load_jsonl(path)
    assert len(rows[1]["text"]) == len(form)


def test_a_test_file_with_labels_is_accepted_for_prediction(tmp_path):
    rows = load_jsonl(write_jsonl(tmp_path / "t.jsonl", [nikl_row("a"), {**nikl_row("b"), "output": ""}]), "optional")
    assert rows["labels"][0] is not None and rows["labels"][1] is None


ENTRY_POINT_BAD_INPUTS = {
    "invalid json": ['{"id": "x", "input": '],
    "misaligned target": [json.dumps(nikl_row("b", target=("공연", 0, 2)), ensure_ascii=False)],
}


def _entry_point_command(name, bad, tmp_path):
    out = tmp_path / "out.jsonl"
    good = write_jsonl(tmp_path / "good.jsonl", [nikl_row("a"), nikl_row("b")])
    if name == "train":
        return [
            "train.py",
            ROOT / "configs" / "quickstart.yaml",
            "--train_files",
            bad,
            "--output_dir",
            tmp_path / "run",
        ], tmp_path / "run"
    if name == "inference":
        return ["inference.py", "--checkpoint", tmp_path / "no-checkpoint-needed", "--input", bad, "--output", out], out
    if name == "ensemble":
        return ["ensemble.py", "--inputs", good, bad, "--output", out], out
    return ["score.py", good, bad], None


@pytest.mark.parametrize("kind", sorted(ENTRY_POINT_BAD_INPUTS))
@pytest.mark.parametrize("entry_point", ["train", "inference", "ensemble", "score"])
def test_every_entry_point_refuses_bad_input_with_one_line(tmp_path, entry_point, kind):
    bad = write_jsonl(tmp_path / "bad.jsonl", [nikl_row("a")], raw_lines=ENTRY_POINT_BAD_INPUTS[kind])
    command, output = _entry_point_command(entry_point, bad, tmp_path)
    result = run_cli(*command, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}:2: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if output is not None:
        assert not output.exists()


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_every_bad_row_kind_stops_ensemble_with_no_output(tmp_path, kind, capsys, monkeypatch):
    """The whole corpus through a writing entry point (in-process, for speed): exit 1, one line, no file."""
    import ensemble

    line, field, _ = BAD_ROWS[kind]
    good = write_jsonl(tmp_path / "good.jsonl", [nikl_row("ok1"), nikl_row("ok2"), nikl_row("ok3")])
    bad = write_jsonl(tmp_path / "bad.jsonl", [nikl_row("ok1"), nikl_row("ok2")], raw_lines=[line])
    out = tmp_path / "voted.jsonl"
    monkeypatch.setattr("sys.argv", ["ensemble.py", "--inputs", str(good), str(bad), "--output", str(out)])
    with pytest.raises(SystemExit) as exited:
        ensemble.entry_point(ensemble.main)()
    assert exited.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith(f"error: {bad}:3: {field}: ")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl"]
