"""The README's offline recipe, its commands as written (the block that starts with post_train.py), on the sample
data with a small budget: post-training, fine-tuning, the n-gram member, their stack and the stack on new text."""

import json
import shlex

from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli


def readme_recipe() -> list[list[str]]:
    """The README's recipe block as commands (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("python post_train.py configs/post_train-offline.yaml")
    block = text[text.rindex("```bash", 0, start) + len("```bash") : text.index("```", start)]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "python":
            commands.append(words[1:])
    return commands


def test_the_readme_recipe_runs_as_written(tmp_path):
    commands = readme_recipe()
    assert [c[0] for c in commands] == ["post_train.py", "train.py", "train.py", "ensemble.py", "inference.py"]
    places = {
        "$D/train.jsonl": SAMPLE_TRAIN,
        "$D/dev.jsonl": SAMPLE_DEV,
        "$D/test.jsonl": SAMPLE_TEST,
        "new.jsonl": SAMPLE_TEST,
        "new_submission.jsonl": tmp_path / "new_submission.jsonl",
        "outputs/offline-cpu": tmp_path / "offline-cpu",
        "outputs/offline-cpu-ngram": tmp_path / "offline-cpu-ngram",
        "outputs/stack": tmp_path / "stack",
    }
    # the small budget, and the configs' own output folders moved into tmp_path (as the places above)
    budget = {
        "configs/post_train-offline.yaml": ["--output_dir", tmp_path / "post-train", "--time_budget_minutes", "0.1"],
        "configs/offline-cpu.yaml": [
            *("--model_name_or_path", tmp_path / "post-train", "--output_dir", tmp_path / "offline-cpu"),
            *("--num_folds", "2", "--num_train_epochs", "1"),
        ],
        "configs/offline-cpu-ngram.yaml": ["--output_dir", tmp_path / "offline-cpu-ngram", "--num_folds", "2"],
    }
    for words in commands:
        args = [places.get(word, word) for word in words]
        run_cli(*args, *budget.get(words[1], []))
    stack = json.loads((tmp_path / "stack" / "stack.json").read_text(encoding="utf-8"))
    assert len(stack["members"]) == 2
    rows = (tmp_path / "new_submission.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == len(SAMPLE_TEST.read_text(encoding="utf-8").splitlines())
