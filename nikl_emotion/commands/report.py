"""Rebuild the end of a finished training run from its fold files: OOF probabilities, thresholds.json,
summary.json, the voted submission, and OUT/report.md with its PNG plots.

python report.py OUT
python report.py --compare OUT_A OUT_B ... [--gold FILE] [--output TABLE.md]   (the table of runs: nikl-emotion runs)
"""

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.commands.cli import command_parser, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("output_dir", nargs="?", help="a train.py output folder with summary.json")
    parser.add_argument("--compare", nargs="+", metavar="DIR", help="the table of these runs instead (runs.py)")
    parser.add_argument("--gold", help="with --compare: a labelled jsonl each run's submission is scored on")
    parser.add_argument("--output", help="with --compare: TABLE.md to write (with TABLE.csv, TABLE.png)")
    args = parser.parse_args(argv)
    quiet_libraries()
    if args.compare:
        from nikl_emotion.commands.runs import compare

        if args.output_dir:
            raise PipelineError("report.py: give OUT or --compare DIR ..., not both")
        return compare(args.compare, args.gold, args.output)
    if not args.output_dir:
        raise PipelineError("report.py: give a run folder OUT (or --compare DIR ...)")
    import os

    from nikl_emotion.decisions.thresholds import describe_gain
    from nikl_emotion.runs.summary import rebuild_run

    try:
        summary = rebuild_run(args.output_dir)
    except (OSError, KeyError, ValueError) as exc:
        raise PipelineError(f"{args.output_dir}: cannot build the report ({exc})") from None
    print(describe_gain(summary["thresholds"]))
    print(f"wrote {os.path.join(args.output_dir, 'report.md')}")
    return 0
