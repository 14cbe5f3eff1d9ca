"""Checkpoints fit the Hugging Face tools: pipeline() loading, a model card, ONNX export with the same probabilities,
and one discoverable entry point."""

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT, SAMPLE_DEV, run_cli

from nikl_emotion.base.fileio import read_probs
from nikl_emotion.base.labels import LABELS
from nikl_emotion.text.data import load_jsonl


def test_pipeline_loads_a_checkpoint_and_scores_the_eight_emotions(tiny_run):
    from transformers import pipeline

    from nikl_emotion import EmotionClassifier
    from nikl_emotion.text.preprocessing import clean

    best = tiny_run / "fold_0" / "best"
    classifier = pipeline("text-classification", model=str(best), top_k=None, function_to_apply="sigmoid", device="cpu")
    rows = load_jsonl(SAMPLE_DEV).select(range(3))
    ours = EmotionClassifier.from_pretrained(best, device="cpu")
    cleaned = clean(rows, ours.preprocessing)
    expected = ours.predict_proba(rows)
    for i, row in enumerate(cleaned):
        scored = classifier({"text": row["text"], "text_pair": row["target"]})
        assert sorted(item["label"] for item in scored) == sorted(LABELS)
        by_label = {item["label"]: item["score"] for item in scored}
        np.testing.assert_allclose([by_label[label] for label in LABELS], expected[i], atol=1e-5)
    assert [ours.model.config.id2label[i] for i in range(8)] == list(LABELS)


def test_every_checkpoint_carries_a_model_card_naming_its_config_and_scores(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text(encoding="utf-8"))
    thresholds = json.loads((tiny_run / "thresholds.json").read_text(encoding="utf-8"))
    for k in range(2):
        card = (tiny_run / f"fold_{k}" / "best" / "README.md").read_text(encoding="utf-8")
        metrics = json.loads((tiny_run / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8"))
        assert card.startswith("---\nlanguage: ko")
        assert f"fold {k} of 2" in card and config["model_name_or_path"] in card
        assert f"{metrics['micro_f1']:.4f}" in card  # the fold's validation score
        assert f"joy {thresholds['per_label']['joy']:.2f}" in card  # the run's fitted thresholds
        assert "Out-of-fold" in card and "Intended use and limits" in card
        card_config = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
        assert card_config == config


@pytest.mark.parametrize("int8, tolerance", [(False, 1e-5), (True, 0.05)])
def test_onnx_export_predicts_the_same_probabilities(tiny_run, tmp_path, int8, tolerance):
    pytest.importorskip("onnxruntime")
    best, export = tiny_run / "fold_0" / "best", tmp_path / "onnx"
    run_cli("export.py", "--checkpoint", best, "--output", export, *(["--int8"] if int8 else []))
    assert (export / "model.onnx").exists() and (export / "preprocessing.json").exists()
    assert not (tmp_path / "onnx.partial").exists()
    for folder, name in ((best, "torch"), (export, "onnx")):
        run_cli(
            "inference.py",
            "--checkpoint",
            folder,
            "--input",
            SAMPLE_DEV,
            "--output",
            tmp_path / f"{name}.jsonl",
            "--probs",
            tmp_path / f"{name}_probs.jsonl",
            "--device",
            "cpu",
        )
    torch_ids, torch_probs = read_probs(tmp_path / "torch_probs.jsonl")
    onnx_ids, onnx_probs = read_probs(tmp_path / "onnx_probs.jsonl")
    assert onnx_ids == torch_ids
    assert np.abs(onnx_probs - torch_probs).max() <= tolerance
    submission = [json.loads(line) for line in (tmp_path / "onnx.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in submission] == torch_ids and list(submission[0]["output"]) == list(LABELS)


def test_one_entry_point_lists_and_runs_the_commands():
    listing = run_cli("-m", "nikl_emotion", "--help")
    for command in ("train", "post_train", "inference", "ensemble", "score", "report", "export"):
        assert f"  {command} " in listing.stdout
    scored = run_cli("-m", "nikl_emotion", "score", SAMPLE_DEV, SAMPLE_DEV, "--json")
    assert json.loads(scored.stdout.strip().splitlines()[-1])["micro_f1"] == 1.0
    unknown = run_cli("-m", "nikl_emotion", "fly", check=False)
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr


def test_every_top_level_script_runs_as_a_process_of_its_own():
    """The suite runs commands in-process (conftest.run_cli); here each script is a real interpreter, as a user
    starts it: its usage on --help, and a PipelineError as one `error:` line and exit code 1."""
    # each script's `if __name__ == "__main__"` wrapper, run as `python SCRIPT.py --help` is (one interpreter)
    scripts = ("train", "distill", "post_train", "inference", "ensemble", "score", "report", "export")
    runner = (
        "import runpy, sys\n"
        f"for script in {scripts!r}:\n"
        "    sys.argv = [script + '.py', '--help']\n"
        "    try:\n"
        "        runpy.run_path(script + '.py', run_name='__main__')\n"
        "    except SystemExit as exited:\n"
        "        print(f'{script} exit {exited.code}')\n"
    )
    shown = run_cli("-c", runner, subprocess=True)
    for script in scripts:
        assert f"{script} exit 0" in shown.stdout, shown.stdout[-2000:] + shown.stderr[-2000:]
    assert shown.stdout.lower().count("usage:") >= len(scripts)
    refused = run_cli("score.py", SAMPLE_DEV, ROOT / "no-such-file.jsonl", subprocess=True, check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 1 and len(errors) == 1 and "no-such-file.jsonl" in errors[0], refused.stderr


def test_tensorboard_logs_survive_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "2",
        "--report_to",
        "tensorboard",
    )
    events = list((out / "fold_0" / "runs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not (out / "fold_0" / "checkpoints").exists()  # deleted at the end of the fold; the logs are elsewhere


def test_tensorboard_without_the_package_is_refused_before_any_work(tmp_path, monkeypatch):
    import transformers.integrations

    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.training.config_checks import parse_config

    monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: False)
    with pytest.raises(PipelineError, match="pip install tensorboard"):
        parse_config(
            [str(ROOT / "configs" / "quickstart.yaml"), "--report_to", "tensorboard", "--output_dir", str(tmp_path)]
        )
