"""K-fold training: `python train.py CONFIG.yaml [--key value ...]` (or under `accelerate launch`).

`python train.py CONFIG.yaml --hp-search N [--fold K] [...]` runs N Optuna trials on fold K instead and writes
OUT/hp_search.csv (see nikl_emotion/training/hp_search.py for the search space)."""

from nikl_emotion.commands.cli import configure_logging, pop_option, quiet_libraries

__all__ = [
    "main",
    "print_summary",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.config_checks import parse_config

    trials = pop_option(argv, ("--hp-search", "--hp_search"))
    settings = parse_config(argv)
    configure_logging(settings.training)
    if trials is None:
        from nikl_emotion.training.kfold import run_training

        summary = run_training(settings)
        if summary is not None:  # the main process, every fold done
            print_summary(summary)
        return 0
    from nikl_emotion.base.vocabulary import CHOOSING_ROWS
    from nikl_emotion.training.hp_search import run_hp_search

    best = run_hp_search(settings, trials)
    if best is not None:
        print(
            f"hp search: {best['trials']} trials on fold {best['fold']}; best micro-F1 {best['micro_f1']:.4f} on the "
            f"{CHOOSING_ROWS[best['chosen_on']]} (trial {best['best_trial']}): {best['params']}; "
            f"table in {best['table']}"
        )
    return 0


def print_summary(summary: dict) -> None:
    """A finished run's scores: per fold and out-of-fold, the thresholds' gain and the decision rule chosen."""
    from nikl_emotion.decisions.decision import describe_choice
    from nikl_emotion.decisions.metrics import format_table
    from nikl_emotion.decisions.thresholds import describe_gain

    table = {f"fold_{f['fold']}": f for f in summary["folds"]}
    table["oof"] = summary["oof"]
    print(format_table(table))
    if "oof_exposure" in summary:
        from nikl_emotion.runs.finished_run import describe_oof_exposure

        print(f"out-of-fold scores on {describe_oof_exposure(summary['oof_exposure'])}")
    print(describe_gain(summary["thresholds"]))
    print(describe_choice(summary["decision"]))
