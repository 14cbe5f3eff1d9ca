"""Loading and validating NIKL jsonl: good files load, bad rows stop the run naming file, line and field."""

import json

import numpy as np
import pytest

from conftest import LABELS, ROOT, SAMPLE_TEST, SAMPLE_TRAIN, nikl_row, run_cli, write_jsonl
from nikl_emotion.data import load_jsonl, load_jsonl_files
from nikl_emotion.errors import RowError


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
    "missing form": (json.dumps({**nikl_row(), "input": {"target": nikl_row()["input"]["target"]}}), "input.form", "missing"),
    "missing target": (json.dumps({**nikl_row(), "input": {"form": "글"}}), "input.target", "missing"),
    "bad label value": (json.dumps(nikl_row(output={**nikl_row()["output"], "fear": "maybe"})), "output.fear", "maybe"),
    "missing label": (json.dumps(nikl_row(output={k: "False" for k in LABELS[:7]})), "output", "missing sadness"),
    "misspelled label": (json.dumps(nikl_row(output={**{k: "False" for k in LABELS[1:]}, "joyy": "True"})), "output", "unknown joyy"),
    "misaligned target": (json.dumps(nikl_row(target=("공연", 0, 2))), "input.target", "does not match"),
    "target out of range": (json.dumps(nikl_row(target=("공연", 30, 32))), "input.target", "outside the text"),
    "half-null target": (json.dumps({**nikl_row(), "input": {"form": "글", "target": {"form": None, "begin": 0, "end": None}}}), "input.target", "all null"),
    "empty output in train": (json.dumps({**nikl_row(), "output": ""}), "output", "no labels"),
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
    bad = write_jsonl(tmp_path / "bad.jsonl", [nikl_row("a")], raw_lines=[json.dumps(nikl_row("b", target=("공연", 0, 2)))])
    out = tmp_path / "out"
    result = run_cli("train.py", ROOT / "configs" / "quickstart.yaml", "--train_files", bad, "--output_dir", out, check=False)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error_lines == [f"error: {bad}:2: input.target: form '공연' does not match the text at [0, 2): '오늘'"]
    assert not out.exists()
