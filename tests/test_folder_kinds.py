"""Issue 26's cases, each as the user met it: no command deletes, overwrites or serves another command's folder
(every folder says which command made it), diverged training is not recorded as done, files read back are checked
by type, and the offline tokenizer covers the text it encodes."""

import json
import math
import shutil

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli
from test_hostile_use import run_main, snapshot

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
POST_TRAIN = ROOT / "configs" / "post_train-quickstart.yaml"
KIND_FILE = ".nikl_emotion_folder.json"


@pytest.fixture(scope="module")
def post_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds") / "post"
    run_cli(
        "post_train.py",
        POST_TRAIN,
        "--output_dir",
        out,
        "--max_steps",
        "4",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
    )
    return out


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A copy of the shared finished run (a failing test must not damage the one every test reads)."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def refused(capsys, monkeypatch, script, *args) -> str:
    code, errors = run_main(capsys, monkeypatch, script, *args)
    assert code == 1 and len(errors) == 1, errors
    return errors[0]


# 1-6: a folder's kind -----------------------------------------------------------------------------------------------


def test_post_train_refuses_a_folder_of_the_users_files(tmp_path, capsys, monkeypatch):
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(POST_TRAIN, exp / "config.yaml")
    for path in (SAMPLE_TRAIN, SAMPLE_DEV, SAMPLE_TEST):
        shutil.copy(path, exp / path.name)
    (exp / "NOTES.md").write_text("n\n", encoding="utf-8")
    before = snapshot(exp)
    error = refused(
        capsys,
        monkeypatch,
        "post_train",
        exp / "config.yaml",
        "--output_dir",
        exp,
        "--train_files",
        exp / "sample_train.jsonl",
        "--time_budget_minutes",
        "0.01",
    )
    assert "holds other files" in error and "NOTES.md" in error
    assert snapshot(exp) == before and not (exp / KIND_FILE).exists()


def test_post_train_refuses_a_finished_training_run(run_copy, capsys, monkeypatch):
    before = snapshot(run_copy)
    error = refused(
        capsys, monkeypatch, "post_train", POST_TRAIN, "--output_dir", run_copy, "--time_budget_minutes", "0.01"
    )
    assert "holds a train.py run" in error
    assert snapshot(run_copy) == before


def test_distill_refuses_a_fold_of_its_teacher(run_copy, capsys, monkeypatch):
    before = snapshot(run_copy)
    error = refused(
        capsys, monkeypatch, "distill", QUICKSTART, "--teacher_run", run_copy, "--output_dir", run_copy / "fold_0"
    )
    assert "lies inside" in error and "a train.py run" in error
    assert snapshot(run_copy) == before


def test_distill_refuses_another_finished_run(run_copy, tiny_run, capsys, monkeypatch):
    before = snapshot(run_copy)
    error = refused(capsys, monkeypatch, "distill", QUICKSTART, "--teacher_run", tiny_run, "--output_dir", run_copy)
    assert "holds a train.py run" in error and "distill.py" in error
    assert snapshot(run_copy) == before


def test_a_post_training_folder_is_not_served_as_a_classifier(post_trained, tmp_path, capsys, monkeypatch):
    for script, args in (
        ("inference", ("--checkpoint", post_trained, "--input", SAMPLE_DEV, "--output", tmp_path / "s.jsonl")),
        ("export", ("--checkpoint", post_trained, "--output", tmp_path / "onnx")),
    ):
        error = refused(capsys, monkeypatch, script, *args)
        assert "a post_train.py model folder" in error and "--model_name_or_path" in error
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "onnx").exists()


def test_a_folder_without_classifier_weights_is_refused_whoever_made_it(post_trained, tmp_path):
    from nikl_emotion import EmotionClassifier
    from nikl_emotion.base.errors import PipelineError

    bare = tmp_path / "bare"  # the same model files, nothing saying who made them: the weights tell
    shutil.copytree(post_trained, bare)
    for name in ("post_train.json", "config.yaml", "inputs.json", KIND_FILE):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(PipelineError, match="classifier weights missing"):
        EmotionClassifier.from_pretrained(bare)


def test_train_refuses_a_post_training_folder(post_trained, capsys, monkeypatch):
    before = snapshot(post_trained)
    error = refused(capsys, monkeypatch, "train", QUICKSTART, "--output_dir", post_trained)
    assert "holds a post_train.py model folder" in error
    assert snapshot(post_trained) == before


def test_overwrite_replaces_only_the_commands_own_files(post_trained, tmp_path):
    from nikl_emotion.folders.folder_kind import POST_TRAIN_OWNER, prepare_output_dir

    folder = tmp_path / "post"
    shutil.copytree(post_trained, folder)
    (folder / "NOTES.md").write_text("mine", encoding="utf-8")
    prepare_output_dir(str(folder), {"mlm_probability": 0.3}, True, owner=POST_TRAIN_OWNER)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".post_train.lock", KIND_FILE, "NOTES.md", "config.yaml"]
    )


def test_a_folder_made_before_the_mark_is_recognised_and_resumes(run_copy):
    from nikl_emotion.folders.folder_kind import folder_kind

    for mark in run_copy.rglob(KIND_FILE):
        mark.unlink()
    assert folder_kind(str(run_copy)) == "run" and folder_kind(str(run_copy / "fold_0")) == "fold"
    command = ("train.py", QUICKSTART, "--output_dir", run_copy, "--num_folds", "2", "--num_train_epochs", "30")
    command += ("--early_stopping_patience", "0")
    result = run_cli(*command)
    assert (
        "fold 0: already complete" in result.stderr and json.loads((run_copy / KIND_FILE).read_text())["kind"] == "run"
    )
    # the status lines are logged (stderr), the scores printed (stdout); --log_level warning keeps only the scores
    assert "fold 0: already complete" not in result.stdout and "   oof " in result.stdout
    quiet = run_cli(*command, "--log_level", "warning")
    assert "already complete" not in quiet.stderr and "   oof " in quiet.stdout


def test_every_kind_refuses_a_folder_inside_another_commands_folder_but_an_export_may_sit_in_its_run(run_copy):
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.folders.folder_kind import check_output_folder

    for kind in ("run", "post-training", "distillation"):
        with pytest.raises(PipelineError, match="lies inside"):
            check_output_folder(str(run_copy / "new" / "deeper"), kind)
    check_output_folder(str(run_copy / "fold_0" / "onnx"), "export", may_lie_in=("run", "fold", "distillation"))
    with pytest.raises(PipelineError, match="lies inside"):  # best/ is replaced when the fold is trained again
        check_output_folder(str(run_copy / "fold_0" / "best" / "onnx"), "export", may_lie_in=("run", "fold"))


# 7: diverged training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--learning_rate", "1e30"),
        ("--learning_rate", "nan"),
        ("--adversarial", "awp", "--adversarial_epsilon", "inf"),
        ("--adversarial", "fgm", "--adversarial_epsilon", "1e30"),
        ("--num_train_epochs", "inf"),
        ("--pos_weight", "inf,1,1,1,1,1,1,1"),
    ],
)
def test_non_finite_or_absurd_training_values_are_refused_before_any_work(args, tmp_path, capsys, monkeypatch):
    error = refused(capsys, monkeypatch, "train", QUICKSTART, "--output_dir", tmp_path / "out", *args)
    assert args[-2].lstrip("-") in error
    assert not (tmp_path / "out").exists()


def test_a_diverged_fold_is_not_marked_done_and_the_corrected_command_runs(tmp_path, capsys, monkeypatch):
    from nikl_emotion.backends.emotion_trainer import EmotionTrainer

    original = EmotionTrainer.compute_loss

    def diverging(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = original(self, model, inputs, return_outputs, num_items_in_batch)
        if not model.training:
            return result
        return (result[0] * math.nan, result[1]) if return_outputs else result * math.nan

    out = tmp_path / "out"
    args = [QUICKSTART, "--output_dir", out, "--num_folds", "2", "--num_train_epochs", "1"]
    with monkeypatch.context() as patched:
        patched.setattr(EmotionTrainer, "compute_loss", diverging)
        error = refused(capsys, monkeypatch, "train", *args)
    assert error.startswith("error: fold 0: training diverged by step") and "learning_rate" in error
    assert not (out / "fold_0").exists() and not list(out.rglob("done.json"))
    code, errors = run_main(capsys, monkeypatch, "train", *args, "--learning_rate", "1e-3")
    assert code == 0 and not errors and (out / "fold_1" / "done.json").exists() and (out / "submission.jsonl").exists()


# 8-9: rows and files read back ---------------------------------------------------------------------------------------


def test_predict_proba_takes_one_row_dict_as_one_row(tiny_run):
    from nikl_emotion import EmotionClassifier

    classifier = EmotionClassifier.from_pretrained(tiny_run / "fold_0" / "best", device="cpu")
    row = {"id": "x", "input": {"form": "오늘 공연 너무 좋았다", "target": {"form": "공연", "begin": 3, "end": 5}}}
    one = classifier.predict_proba(row)
    assert one.shape == (1, 8)
    np.testing.assert_allclose(one, classifier.predict_proba([row]), atol=1e-6)
    assert classifier.predict(row).shape == (1, 8)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"fallback": "false"}, "fallback"),
        ({"fallback": "no"}, "fallback"),
        ({"min_votes": "1"}, "min_votes"),
        ({"weights": ["a", "b"]}, "weights"),
        ({"threshold": "0.5"}, "threshold"),
        ({"fallback": 0}, "fallback"),
        ({"weights": [1]}, "weights"),
    ],
)
def test_decision_json_is_checked_by_type_before_any_prediction(change, key, run_copy, tmp_path, capsys, monkeypatch):
    decision = run_copy / "decision.json"
    decision.write_text(json.dumps({**json.loads(decision.read_text()), **change}), encoding="utf-8")
    error = refused(
        capsys, monkeypatch, "inference", "--run", run_copy, "--input", SAMPLE_DEV, "--output", tmp_path / "s.jsonl"
    )
    assert f"{key}:" in error and "decision.json" in error
    assert not (tmp_path / "s.jsonl").exists()


# 10-11: the time budget ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "1e12", "-1"])
def test_a_non_finite_or_absurd_time_budget_is_refused_before_any_work(value, tmp_path, capsys, monkeypatch):
    error = refused(
        capsys, monkeypatch, "post_train", POST_TRAIN, "--output_dir", tmp_path / "out", "--time_budget_minutes", value
    )
    assert "time_budget_minutes" in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("accumulation", [1, 4])
def test_the_time_budget_times_a_whole_optimizer_step(accumulation, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    from nikl_emotion.backends.trainer_parts import measure_step_seconds

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)
            self.forwards = 0

        def forward(self, x, labels=None):
            self.forwards += 1
            return SequenceClassifierOutput(loss=self.linear(x).pow(2).mean())

    model = Counting()
    args = TrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        use_cpu=True,
        report_to="none",
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"x": torch.randn(4)} for _ in range(6)])
    before = model.linear.weight.detach().clone()
    measure_step_seconds(trainer, steps=3, warmup=2)
    # every measured step runs `accumulation` micro-batches (cycling over the 3 batches there are), weights unmoved
    assert model.forwards == (3 + 2) * accumulation
    assert torch.equal(model.linear.weight, before)


# 12: loose ends -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, args",
    [
        ("inference", ("--checkpoint", "X", "--inp", "a.jsonl", "--output", "b.jsonl")),
        ("ensemble", ("--inputs", "a.jsonl", "--out", "b.jsonl")),
        ("export", ("--check", "X", "--output", "Y")),
        ("score", (str(SAMPLE_DEV), str(SAMPLE_DEV), "--js")),
        ("report", ("OUT", "--out", "x")),
    ],
)
def test_no_command_accepts_an_abbreviated_option(script, args, capsys, monkeypatch):
    code, _ = run_main(capsys, monkeypatch, script, *args)
    assert code == 2  # argparse's usage error; a prefix taken for the option would go on and fail otherwise


def test_stacking_one_run_twice_is_refused(tiny_run, tmp_path, capsys, monkeypatch):
    error = refused(
        capsys,
        monkeypatch,
        "ensemble",
        "--runs",
        tiny_run,
        str(tiny_run) + "/",
        "--strategy",
        "stack",
        "--output",
        tmp_path / "s.jsonl",
    )
    assert "same run" in error


def test_stacking_runs_trained_on_other_file_contents_names_that_cause():
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.runs.stack_run import RunMember, check_same_folds

    config = {"num_folds": 2, "seed": 42, "train_files": ["train.jsonl"]}
    first = RunMember("A", ["a", "b"], np.zeros((2, 8)), np.array([0, 1]), [], [], config, {"train.jsonl": "1"})
    other = RunMember("B", ["a", "b"], np.zeros((2, 8)), np.array([1, 0]), [], [], config, {"train.jsonl": "2"})
    with pytest.raises(PipelineError, match="other contents of the training files"):
        check_same_folds([first, other])


def test_an_unfinished_pseudo_label_run_is_refused(run_copy, tmp_path, capsys, monkeypatch):
    (run_copy / "fold_1" / "done.json").unlink()
    error = refused(
        capsys,
        monkeypatch,
        "train",
        QUICKSTART,
        "--output_dir",
        tmp_path / "out",
        "--num_folds",
        "2",
        "--pseudo_label_run",
        run_copy,
    )
    assert "fold 1 is not complete" in error
    (run_copy / "fold_1" / "done.json").write_text('{"fold": 1}', encoding="utf-8")
    (run_copy / "decision.json").unlink()
    assert "no decision.json" in refused(
        capsys,
        monkeypatch,
        "train",
        QUICKSTART,
        "--output_dir",
        tmp_path / "out",
        "--num_folds",
        "2",
        "--pseudo_label_run",
        run_copy,
    )


def test_swa_that_never_started_says_so(caplog):
    from types import SimpleNamespace

    from nikl_emotion.backends.averaging import WeightAveraging

    averaging = WeightAveraging(swa_epochs=3)
    state = SimpleNamespace(epoch=2.0, is_world_process_zero=True, best_model_checkpoint="checkpoint-2")
    args = SimpleNamespace(num_train_epochs=10, load_best_model_at_end=True)
    with caplog.at_level("WARNING"):
        averaging.on_train_end(args, state, None, model=None)
    assert "no weights were averaged" in caplog.text


def test_layerwise_decay_docstring_matches_the_embeddings_rate():
    import torch

    from nikl_emotion.backends import techniques

    model = torch.nn.Module()
    model.embeddings = torch.nn.Linear(2, 2)
    model.encoder = torch.nn.Module()
    model.encoder.layer = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    model.classifier = torch.nn.Linear(2, 2)
    groups = techniques.layerwise_parameter_groups(model, 1.0, 0.5, 0.0, [])
    assert min(group["lr"] for group in groups) == 0.5 ** (3 + 1)
    assert "decay^(L + 1)" in techniques.__doc__


# 13: the offline tokenizer covers what it encodes --------------------------------------------------------------------


def test_the_offline_tokenizer_has_a_piece_for_every_character_it_learned():
    from nikl_emotion.backends.backbone import train_wordpiece_tokenizer

    texts = [json.loads(line)["input"]["form"] for line in SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()[:40]]
    texts.append("희귀한뷁글자")  # 뷁 once, inside a word: WordPiece would make the whole word unknown
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=2000)
    ids = [i for row in tokenizer(texts)["input_ids"] for i in row]
    assert tokenizer.unk_token_id not in ids


def test_training_on_few_rows_predicts_its_test_file_and_an_unknown_rate_names_the_offline_cause(
    tmp_path, capsys, monkeypatch
):
    from nikl_emotion.backends.backbone import load_tokenizer
    from nikl_emotion.backends.encoder_backend import prepare_backbone
    from nikl_emotion.base.config import ModelArguments
    from nikl_emotion.text.encoding import unknown_rate_message

    few = tmp_path / "few.jsonl"
    few.write_text("".join(SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    out = tmp_path / "out"
    path = prepare_backbone(ModelArguments(), ["가나다", "라마바"], str(out), 42)
    tokenizer = load_tokenizer(path)
    message = unknown_rate_message(0.5, 10, tokenizer, 0.05)
    assert "trained here on other texts" in message and "max_unknown_rate" in message and "Korean" not in message
    shutil.rmtree(out)
    code, errors = run_main(
        capsys,
        monkeypatch,
        "train",
        QUICKSTART,
        "--output_dir",
        out,
        "--train_files",
        few,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "1",
    )
    assert code == 0 and not errors and (out / "submission.jsonl").exists()


def test_max_unknown_rate_lets_a_user_past_the_stop(tiny_run):
    from datasets import Dataset

    from nikl_emotion.backends.backbone import load_tokenizer
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.text.preprocessing import Preprocessing, encode

    tokenizer = load_tokenizer(str(tiny_run / "backbone"))
    preprocessing = Preprocessing.load(str(tiny_run / "fold_0" / "best"))
    rows = Dataset.from_dict(
        {"id": ["a"], "text": ["ℵℶℷ ℸ"], "target": [None], "target_begin": [None], "target_end": [None]}
    )
    with pytest.raises(PipelineError, match="max_unknown_rate 0.05"):
        encode(rows, tokenizer, preprocessing)
    assert len(encode(rows, tokenizer, preprocessing, max_unknown_rate=1.0)) == 1


def test_commands_that_read_a_run_refuse_another_commands_folder(post_trained, tiny_run, tmp_path, capsys, monkeypatch):
    before = snapshot(post_trained)
    for script, args in (
        ("inference", ("--run", post_trained, "--input", SAMPLE_DEV, "--output", tmp_path / "s.jsonl")),
        ("report", (post_trained,)),
        ("ensemble", ("--runs", tiny_run, post_trained, "--strategy", "stack", "--output", tmp_path / "s.jsonl")),
    ):
        assert "holds a post_train.py model folder, not a train.py run" in refused(capsys, monkeypatch, script, *args)
    assert snapshot(post_trained) == before and not (tmp_path / "s.jsonl").exists()


def test_export_replaces_a_previous_export_only_when_it_holds_nothing_else(tiny_run, tmp_path):
    from nikl_emotion.backends.export import check_export_target
    from nikl_emotion.base.errors import PipelineError

    previous = tmp_path / "onnx"
    previous.mkdir()
    for name in ("model.onnx", "export.json", "config.json", "tokenizer.json", "preprocessing.json"):
        (previous / name).write_text("{}", encoding="utf-8")
    check_export_target(str(tiny_run / "fold_0" / "best"), str(previous))
    (previous / "NOTES.md").write_text("mine", encoding="utf-8")
    with pytest.raises(PipelineError, match="also holds NOTES.md"):
        check_export_target(str(tiny_run / "fold_0" / "best"), str(previous))


def test_an_output_file_may_sit_in_a_run_but_not_replace_its_files(run_copy, tmp_path, capsys, monkeypatch):
    before = snapshot(run_copy)
    best = run_copy / "fold_0" / "best"
    for script, args in (
        ("inference", ("--checkpoint", best, "--input", SAMPLE_DEV, "--output", run_copy / "submission.jsonl")),
        ("inference", ("--checkpoint", best, "--input", SAMPLE_DEV, "--output", run_copy / ".fold_0.lock")),
        (
            "inference",
            ("--checkpoint", best, "--input", SAMPLE_DEV, "--output", run_copy / ".nikl_emotion_folder.json"),
        ),
        (
            "inference",
            (
                "--checkpoint",
                best,
                "--input",
                SAMPLE_DEV,
                "--output",
                tmp_path / "s.jsonl",
                "--probs",
                run_copy / "fold_0" / "val_probs.jsonl",
            ),
        ),
        (
            "ensemble",
            (
                "--inputs",
                run_copy / "fold_0" / "test_probs.jsonl",
                run_copy / "fold_1" / "test_probs.jsonl",
                "--reference",
                SAMPLE_TEST,
                "--output",
                run_copy / "oof.jsonl",
            ),
        ),
    ):
        assert "which its command wrote" in refused(capsys, monkeypatch, script, *args)
    assert snapshot(run_copy) == before
    code, errors = run_main(
        capsys,
        monkeypatch,
        "inference",
        "--checkpoint",
        best,
        "--input",
        SAMPLE_DEV,
        "--output",
        run_copy / "dev_submission.jsonl",
    )  # the README's quickstart does this
    assert code == 0 and not errors and (run_copy / "dev_submission.jsonl").exists()


def test_the_mark_being_written_by_another_claim_is_not_a_foreign_file():
    """A second copy of a command that lists the folder while the first writes its mark (the atomic write's staging
    file) goes on to the lock and is refused as a copy, not as a folder of someone else's files."""
    from nikl_emotion.folders.folder_kind import is_ignorable

    assert is_ignorable(f".{KIND_FILE}.12091.e8tp24h6.tmp") and is_ignorable(".fold_0.lock")
    assert not is_ignorable(".summary.json.12091.e8tp24h6.tmp") and not is_ignorable("notes.txt")
