"""Rebuild the end of a finished training run from its fold files: OOF probabilities, thresholds.json,
summary.json, the voted submission, and OUT/report.md with its PNG plots.

python report.py OUT
"""

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.commands.cli import command_parser, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("output_dir", help="a train.py output folder with summary.json")
    args = parser.parse_args(argv)
    quiet_libraries()
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
