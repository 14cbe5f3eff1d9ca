"""The offline recipe as one command (`recipe.py DATA_DIR --minutes M`), as the README gives it, on the sample data with
a small budget: its plan, its stages, recipe.json, a kill mid-stage and the resume, the stack served on new text; the
plan's arithmetic against the formula written out; what it refuses before any work."""

import json
import math
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli

from nikl_emotion.backends.budget_clock import SAFETY
from nikl_emotion.backends.fold_backend import FoldCost
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.training.recipe_plan import (
    EPOCHS_SHARE,
    FINE_TUNE_SHARE,
    FoldCounts,
    fine_tuning_plan,
    format_plan_table,
    margin_seconds,
    post_training_seconds,
)


def readme_recipe() -> list[list[str]]:
    """The README's recipe block as commands (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("python recipe.py $D")
    block = text[text.rindex("```bash", 0, start) + len("```bash") : text.index("```", start)]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "python":
            commands.append(words[1:])
    return commands


def small_configs(tmp_path) -> list[str]:
    """The bundled recipe's configs with 2 folds of 3 epochs: the recipe's options that name them."""
    options = []
    for option, name, changes in (
        ("--fine_tune_config", "offline-cpu", {"num_folds": 2, "num_train_epochs": 3}),
        ("--ngram_config", "offline-cpu-ngram", {"num_folds": 2}),
    ):
        config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, **changes}), encoding="utf-8")
        options += [option, str(path)]
    return options


def log_tail(log) -> str:
    log.seek(0)
    return log.read()[-3000:]


def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, source in (("train", SAMPLE_TRAIN), ("dev", SAMPLE_DEV), ("test", SAMPLE_TEST)):
        (folder / f"{name}.jsonl").write_bytes(source.read_bytes())
    return folder


def test_the_readme_recipe_plans_its_minutes_and_resumes_after_a_kill(tmp_path):
    commands = readme_recipe()
    assert [c[0] for c in commands] == ["recipe.py", "inference.py"]
    out, data = tmp_path / "recipe", data_dir(tmp_path)
    places = {"$D": data, "outputs/recipe": out, "outputs/recipe/stack": out / "stack", "new.jsonl": SAMPLE_TEST}
    places["new_submission.jsonl"] = tmp_path / "new_submission.jsonl"
    recipe, serve = ([str(places.get(word, word)) for word in words] for words in commands)
    recipe[recipe.index("--minutes") + 1] = "1.5"  # the sample data's (at 1, a loaded CI run left post-training none)
    recipe += small_configs(tmp_path)

    # killed once fine-tuning's first fold is done
    log = open(tmp_path / "killed.log", "w+", encoding="utf-8")  # not a pipe: one nobody reads fills and blocks it
    process = subprocess.Popen([sys.executable, *recipe], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    first_fold = out / "fine-tune" / "fold_0" / "done.json"
    deadline = time.time() + 400
    try:
        while time.time() < deadline and process.poll() is None and not first_fold.exists():
            time.sleep(0.05)
        assert process.poll() is None, f"the recipe ended before it could be killed: {log_tail(log)}"
        assert first_fold.exists(), "fine-tuning's first fold did not finish in time"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()  # a failed wait above leaves no recipe running
        process.wait(timeout=60)
        log.close()
    killed = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    assert killed["stages"]["fine_tune"]["status"] == "running" and not (out / "stack").exists()
    done_before = ("calibration", "ngram", "ngram_context", "post_train")
    assert [killed["stages"][name]["status"] for name in done_before] == ["done"] * 4

    resumed = run_cli(*recipe)
    for skipped in ("ngram", "ngram_context", "post_train"):
        assert f"recipe: {skipped} already done" in resumed.stderr
    assert "fold 0: already complete" in resumed.stderr
    record = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    stages = record["stages"]
    assert record["resumed"] and all(stage["status"] == "done" for stage in stages.values())
    assert list(stages) == ["calibration", "ngram", "ngram_context", "post_train", "fine_tune", "stack"]
    for name in done_before:  # spent before the kill, not again
        assert stages[name]["seconds"] == killed["stages"][name]["seconds"]
    # each budgeted stage ran on the seconds the plan gave it
    post_train = json.loads((out / "post-train" / "post_train.json").read_text(encoding="utf-8"))
    given = post_train["time_budget"]["time_budget_minutes"] * 60
    assert given == pytest.approx(stages["post_train"]["planned_seconds"], abs=0.01)
    assert stages["post_train"]["seconds"] <= stages["post_train"]["planned_seconds"] + 10
    fine_tune = yaml.safe_load((out / "fine-tune" / "config.yaml").read_text(encoding="utf-8"))
    assert fine_tune["time_budget_minutes"] == pytest.approx(record["budgets"]["fine_tune"] / 60, abs=1e-4)
    assert fine_tune["model_name_or_path"] == str(out / "post-train")
    plan = record["fine_tuning_plan"]
    assert plan["counts"]["folds"] == 2 and plan["counts"]["epochs"] == 3
    assert plan["measured"]["seconds_per_step"] > 0 and plan["seconds"] > 0
    assert "total" in resumed.stdout and "stack: nested OOF micro-F1" in resumed.stdout
    assert record["scores"]["stack_nested_oof"] > 0
    stack = json.loads((out / "stack" / "stack.json").read_text(encoding="utf-8"))
    members = [str(out / name) for name in ("fine-tune", "ngram", "ngram-context")]  # both n-gram views
    assert [name for name in stack["oof_scores"] if name.startswith(str(out))] == members
    context = out / "ngram-context" / "fold_0" / "best" / "ngram.json"
    assert json.loads(context.read_text(encoding="utf-8"))["model"] == "ngram:context"

    again = run_cli(*recipe)  # rerun = resume: nothing left to do, the figures kept
    assert "recipe: stack already done" in again.stderr
    assert json.loads((out / "recipe.json").read_text(encoding="utf-8"))["spent_seconds"] == record["spent_seconds"]

    run_cli(*serve)
    rows = (tmp_path / "new_submission.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(SAMPLE_TEST.read_text(encoding="utf-8").splitlines())


COST = FoldCost(
    seconds_per_step=0.2, steps_per_epoch=30, seconds_per_predicted_row=0.001, seconds_per_save=0.5, seconds_to_build=2
)


def test_the_fine_tuning_plan_counts_every_epoch_at_the_measured_costs():
    counts = FoldCounts(folds=5, epochs=6, max_steps=0, choosing_rows=700, predicted_rows=1800)
    plan = fine_tuning_plan(COST, counts, setup_seconds=20, budget_seconds=3600)
    # written out: 6 epochs of 30 steps at 0.2 s; 6 evaluations of 700 rows and 1,800 predicted at 1 ms; 6 + 2 saves
    per_fold = 2 + 6 * 30 * 0.2 + (6 * 700 + 1800) * 0.001 + (6 + 2) * 0.5
    assert plan["steps_per_fold"] == 180
    assert plan["fold_seconds"] == pytest.approx(per_fold, abs=0.05)
    assert plan["every_epoch_seconds"] == pytest.approx((20 + 5 * per_fold) / SAFETY, abs=0.05)
    # planned: EPOCHS_SHARE of the schedule (6 * 0.65 = 3.9 epochs: 117 steps, 4 epochs begun), its clock ends it
    compressed = 2 + 117 * 0.2 + (4 * 700 + 1800) * 0.001 + (4 + 2) * 0.5
    assert EPOCHS_SHARE == 0.65 and plan["seconds"] == pytest.approx((20 + 5 * compressed) / SAFETY, abs=0.05)
    # where that costs more than FINE_TUNE_SHARE of the budget, the folds are compressed onto that share
    short = fine_tuning_plan(COST, counts, setup_seconds=20, budget_seconds=300)
    assert short["seconds"] == pytest.approx(FINE_TUNE_SHARE * 300)
    assert short["every_epoch_seconds"] == plan["every_epoch_seconds"]
    # max_steps replaces the epochs; a partial epoch is evaluated too
    steps = fine_tuning_plan(COST, FoldCounts(5, 6, 45, 700, 1800), 20, 3600)
    assert steps["steps_per_fold"] == 45
    assert steps["fold_seconds"] == pytest.approx(2 + 45 * 0.2 + (2 * 700 + 1800) * 0.001 + 4 * 0.5, abs=0.05)
    assert math.isclose(margin_seconds(3600), 72) and margin_seconds(60) == 5


def test_post_training_gets_the_rest_or_the_recipe_is_refused():
    assert post_training_seconds(3600, 300, 1500) == pytest.approx(3600 - 300 - 1500 - 72)
    with pytest.raises(PipelineError, match="leaves post-training .* less than 10% of the budget"):
        post_training_seconds(3600, 300, 3000)
    table = format_plan_table(
        {
            "budget_seconds": 3600,
            "margin_seconds": 72,
            "spent_seconds": 3500,
            "stages": {"ngram": {"planned_seconds": None, "seconds": 100, "how": "measured"}},
        }
    )
    assert "other" in table and "3400" in table and "97.2% of the budget" in table


def test_the_recipe_refuses_before_any_work(tmp_path):
    data, out = data_dir(tmp_path), tmp_path / "out"
    no_train = tmp_path / "empty"
    no_train.mkdir()
    cases = [
        ([str(no_train)], "train.jsonl not found"),
        ([str(data), "--minutes", "nan"], "--minutes: expected a number of minutes"),
        ([str(data), "--fine_tune_config", "missing.yaml"], "--fine_tune_config: missing.yaml not found"),
    ]
    cleansed = yaml.safe_load((ROOT / "configs" / "offline-cpu.yaml").read_text(encoding="utf-8"))
    (tmp_path / "other-cleaning.yaml").write_text(yaml.safe_dump({**cleansed, "cleanse": False}), encoding="utf-8")
    cases.append(([str(data), "--fine_tune_config", str(tmp_path / "other-cleaning.yaml")], "cleanse: "))
    ngram = yaml.safe_load((ROOT / "configs" / "offline-cpu-ngram.yaml").read_text(encoding="utf-8"))
    ngram["model_name_or_path"] = "ngram:context"  # the recipe's second view named as its first
    (tmp_path / "context.yaml").write_text(yaml.safe_dump(ngram), encoding="utf-8")
    cases.append(([str(data), "--ngram_config", str(tmp_path / "context.yaml")], "the same view twice"))
    small = ["--minutes", "0.5", *small_configs(tmp_path)]  # were a refusal missed, the recipe would end soon
    for args, message in cases:
        result = run_cli("recipe.py", *small, *args, "--output_dir", out, check=False)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr[-2000:])
        assert not out.exists() or not any(out.iterdir()), args
    # a budget that fine-tuning alone exceeds: refused once one fold is measured, before anything trains
    result = run_cli("recipe.py", data, *small, "--minutes", "0.1", "--output_dir", out, check=False)
    assert result.returncode == 1 and "which leaves post-training" in result.stderr, result.stderr[-2000:]
    assert not (out / "ngram").exists() and not (out / "post-train").exists()
    # a folder of another request, or of another command
    from nikl_emotion.folders.folder_kind import check_not_a_folders_own_file, mark_folder

    mark_folder(str(out), "recipe")
    done = {"ngram": {"status": "done", "seconds": 5}}
    (out / "recipe.json").write_text(json.dumps({"request": {"minutes": 30}, "stages": done}), encoding="utf-8")
    result = run_cli("recipe.py", data, *small, "--output_dir", out, check=False)
    assert result.returncode == 1 and "holds a recipe asked with other values" in result.stderr
    with pytest.raises(PipelineError, match="recipe.json is a file of"):
        check_not_a_folders_own_file(str(out / "recipe.json"), "--output")
    run = tmp_path / "run"
    mark_folder(str(run), "run")
    (run / "config.yaml").write_text("num_folds: 2\n", encoding="utf-8")
    result = run_cli("recipe.py", data, *small, "--output_dir", run, check=False)
    assert result.returncode == 1 and "holds a train.py run, not a recipe.py folder" in result.stderr
    # a second recipe started on the folder one is running in: refused at once, naming the holder
    from nikl_emotion.base.locking import exclusive
    from nikl_emotion.folders.run_folder import RecipeFolder

    busy = tmp_path / "busy"
    with exclusive(RecipeFolder(str(busy)).lock, str(busy)):
        result = run_cli("recipe.py", data, *small, "--output_dir", busy, check=False)
    assert result.returncode == 1 and "is in use by another process" in result.stderr, result.stderr[-2000:]
    assert sorted(p.name for p in busy.iterdir() if not p.name.startswith(".")) == []
