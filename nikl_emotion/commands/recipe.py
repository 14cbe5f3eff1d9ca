"""The offline recipe as one command that plans its minutes on this machine:

nikl-emotion recipe DATA_DIR [--minutes 60] [--output_dir OUT] [--seed S] [--post_train_config F]
    [--fine_tune_config F] [--ngram_config F]        (or: python recipe.py DATA_DIR ...)

DATA_DIR holds train.jsonl (labelled), test.jsonl or dev.jsonl (the file the runs and the stack predict; test.jsonl
when both are there, and dev.jsonl is then only text) and any other jsonl files, whose text post-training learns with
the others' (labels unused). The stages, each the command a user would run, in its own folder under OUT:

  (.calibration)  one fold of fine-tuning measured (a few real steps, a prediction, a save): the fine-tuning plan
  OUT/ngram       train.py NGRAM_CONFIG: the n-gram member (its seconds measured)
  OUT/post-train  post_train.py POST_TRAIN_CONFIG --time_budget_minutes <the rest of the budget, less a margin>
  OUT/fine-tune   train.py FINE_TUNE_CONFIG --model_name_or_path OUT/post-train --time_budget_minutes <the seconds
                  left less the stack's: every epoch's price, or 60% of the budget where that is more>
  OUT/stack       ensemble.py --runs OUT/fine-tune OUT/ngram --strategy stack (serve: inference.py --run OUT/stack)

OUT/recipe.json holds the plan and what each stage spent (printed as a table at the end). A stage whose output
exists is skipped: run the same command again to resume a recipe that was stopped.
"""

import time

from nikl_emotion.commands.cli import command_parser, configure_logging, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    started = time.monotonic()  # the budget counts from here: imports and checks are paid from it
    parser = command_parser(__doc__)
    parser.add_argument("data_dir", help="the folder with train.jsonl, test.jsonl or dev.jsonl, and other texts")
    parser.add_argument("--minutes", type=float, default=60.0, help="the whole recipe's budget (default 60)")
    parser.add_argument("--output_dir", default="outputs/recipe", help="the recipe's folder (default outputs/recipe)")
    parser.add_argument("--seed", type=int, help="every stage's seed (default: the configs' own, which must agree)")
    parser.add_argument("--post_train_config", default="configs/post_train-offline.yaml")
    parser.add_argument("--fine_tune_config", default="configs/offline-cpu.yaml")
    parser.add_argument("--ngram_config", default="configs/offline-cpu-ngram.yaml")
    args = parser.parse_args(argv)
    quiet_libraries()
    configure_logging()
    from nikl_emotion.training.recipe import RecipeRequest, run_recipe
    from nikl_emotion.training.recipe_plan import format_plan_table

    request = RecipeRequest(
        args.data_dir,
        args.minutes,
        args.output_dir,
        args.seed,
        args.post_train_config,
        args.fine_tune_config,
        args.ngram_config,
    )
    record = run_recipe(request, started)
    print(format_plan_table(record))
    scores = record["scores"]
    if scores.get("stack_nested_oof") is not None:
        print(f"stack: nested OOF micro-F1 {scores['stack_nested_oof']:.4f} ({scores['stack_rule']})")
    if "predicted_file_micro_f1" in scores:
        print(f"stack on {record['request']['files']['predicted']}: micro-F1 {scores['predicted_file_micro_f1']:.4f}")
    stack = f"{args.output_dir}/stack"
    print(f"recipe.json in {args.output_dir}; serve the stack with: python inference.py --run {stack} --input FILE")
    return 0
