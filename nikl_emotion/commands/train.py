"""K-fold training: `python train.py CONFIG.yaml [--key value ...]` (or under `accelerate launch`).

`python train.py CONFIG.yaml --hp-search N [--hp_folds K ...] [--hp_storage URL --hp_study NAME] [...]` runs N
trials of an Optuna study instead (several workers may share it) and writes OUT/hp_search.csv once no trial runs
(nikl_emotion/training/hp_search.py); `--hp_report true` writes the study's table now and trains nothing."""

from nikl_emotion.commands.cli import configure_logging, pop_option, quiet_libraries

__all__ = [
    "main",
    "print_summary",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.config_checks import parse_config

    trials = pop_option(argv, ("--hp-search", "--hp_search"))
    if trials is not None or any(token.startswith("--hp_") for token in argv):
        return _search(argv, trials)
    settings = parse_config(argv)
    configure_logging(settings.training)
    from nikl_emotion.training.kfold import run_training

    summary = run_training(settings)
    if summary is not None:  # the main process, every fold done
        print_summary(summary)
    return 0


def _search(argv: list[str], trials: int | None) -> int:
    """`--hp-search N` (and the study's `--hp_*` keys), or `--hp_report` alone."""
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.base.vocabulary import CHOOSING_ROWS
    from nikl_emotion.training.hp_search import parse_search_config, run_hp_search

    settings = parse_search_config(argv)
    configure_logging(settings.run.training)
    if trials is None and not settings.search.hp_report:
        raise PipelineError("the hp_* keys belong to a search: add --hp-search N (or --hp_report true)")
    found = run_hp_search(settings, trials or 0)
    if found is None:
        return 0
    folds = ("folds " if len(found["folds"]) > 1 else "fold ") + ", ".join(map(str, found["folds"]))
    where = f"table in {found['table']}" if found["table"] else "other workers' trials still run (the last writes it)"
    best = (
        f"best micro-F1 {found['micro_f1']:.4f} on the {CHOOSING_ROWS[found['chosen_on']]} (trial "
        f"{found['best_trial']}): {found['params']}"
        if found["best_trial"] is not None
        else "no complete trial yet"
    )
    print(f"hp search: {found['trials']} trials on {folds}; {best}; {where}")
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
