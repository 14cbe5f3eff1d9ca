"""K-fold training: `python train.py CONFIG.yaml [--key value ...]` (or under `accelerate launch`).

`python train.py CONFIG.yaml --hp-search N [--fold K] [...]` runs N Optuna trials on fold K instead and writes
OUT/hp_search.csv (see nikl_emotion/training/hp_search.py for the search space)."""

from nikl_emotion.commands.cli import pop_option, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    quiet_libraries()
    from nikl_emotion.training.config_checks import parse_config

    trials = pop_option(argv, ("--hp-search", "--hp_search"))
    settings = parse_config(argv)
    if trials is None:
        from nikl_emotion.training.kfold import run_training

        run_training(settings)
    else:
        from nikl_emotion.training.hp_search import run_hp_search

        run_hp_search(settings, trials)
    return 0
