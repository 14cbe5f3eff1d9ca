"""Finished runs side by side: one row per run (stack, search) with the settings that differ between them, sorted by
out-of-fold micro-F1; Markdown on stdout, and with --output the table, a CSV and a plot beside it.

nikl-emotion runs OUT_A OUT_B ... [--gold dev.jsonl] [--output runs.md]
python report.py --compare OUT_A OUT_B ... [--gold dev.jsonl] [--output runs.md]
"""

import sys

from nikl_emotion.commands.cli import command_parser, quiet_libraries

__all__ = [
    "main",
    "compare",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("runs", nargs="+", help="train.py run folders, ensemble.py stacks, --hp-search folders")
    parser.add_argument("--gold", help="a labelled jsonl: each run's submission.jsonl scored on it when it predicts it")
    parser.add_argument("--output", help="TABLE.md to write (TABLE.csv and TABLE.png beside it)")
    args = parser.parse_args(argv)
    quiet_libraries()
    return compare(args.runs, args.gold, args.output)


def compare(runs: list[str], gold: str | None, output: str | None) -> int:
    """The table of `runs` printed (and written to `output`); folders that are not runs are named on stderr."""
    import os

    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.folders.folder_kind import check_not_a_folders_own_file
    from nikl_emotion.runs.run_table import markdown_table, read_runs, table_records, write_run_table

    if output:  # RUN/report.md is the run's own report: the table and its CSV and plot go elsewhere
        base = os.path.splitext(output)[0]
        for path in (output, f"{base}.csv", f"{base}.png"):
            check_not_a_folders_own_file(path, "--output")
    rows, skipped = read_runs(runs, gold)
    for line in skipped:
        print(line, file=sys.stderr)
    if not rows:
        raise PipelineError("no finished run, stack or search among the folders given")
    records = table_records(rows, with_gold=gold is not None)
    print(markdown_table(records), end="")
    if output:
        for path in write_run_table(rows, records, output):
            print(f"wrote {path}")
    return 0
