"""Predict a jsonl file with one or more checkpoints and write an official-format submission.

python inference.py --checkpoint OUT/fold_0/best [OUT/fold_1/best ...] --input test.jsonl --output submission.jsonl \
    [--probs probs.jsonl]
python inference.py --run OUT --input test.jsonl --output submission.jsonl   (a run's folds and its decision rule)
python inference.py --run STACK --input test.jsonl --output submission.jsonl (an ensemble.py stack folder)
accelerate launch inference.py --run OUT --input corpus.jsonl --output labels.jsonl  (the rows split across the
    processes, e.g. one per GPU; one output, in input order, the same bytes as one process)
"""

from nikl_emotion.base.vocabulary import DEFAULT_STRATEGY, STRATEGIES
from nikl_emotion.commands.cli import (
    add_decision_arguments,
    add_loading_arguments,
    command_parser,
    decision_options_given,
    decision_rule,
    load_options,
    quiet_libraries,
)

__all__ = [
    "main",
]


def _parser():
    parser = command_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+", help="checkpoint folder(s), e.g. OUT/fold_*/best")
    source.add_argument(
        "--run",
        help="a finished train.py output folder (its fold checkpoints, voted with the rule "
        "its submission.jsonl was made with, OUT/decision.json) or an ensemble.py "
        "--output_dir stack folder (its members' folds, stacked, voted by its rule)",
    )
    parser.add_argument("--input", required=True, help='NIKL jsonl to predict (output may be "")')
    parser.add_argument("--output", required=True, help="submission jsonl to write")
    parser.add_argument("--probs", help="also write the (mean) probabilities here")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--chunk_size",
        type=int,
        help="rows read, sorted by length and predicted together (memory holds one chunk); under accelerate "
        "launch, the unit split across the processes (default: about 1/32 of the file, 2,048 to 65,536 rows, "
        "whatever the number of processes)",
    )
    add_decision_arguments(parser)
    parser.add_argument(
        "--strategy", choices=STRATEGIES, help=f"how several checkpoints combine (default {DEFAULT_STRATEGY})"
    )
    add_loading_arguments(parser)
    parser.add_argument(
        "--load_in_4bit",
        action="store_true",
        help="a decoder LoRA adapter's base in 4-bit NF4 (CUDA and bitsandbytes: pip install .[qlora])",
    )
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.run and (args.strategy or decision_options_given(args)):
        parser.error("--run takes the run's own decision rule: drop --strategy, --threshold(s) and --no_fallback")
    rule = None if args.run else decision_rule(args)
    quiet_libraries()
    from nikl_emotion.folders.folder_kind import check_not_a_folders_own_file
    from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_file, predict_run_file
    from nikl_emotion.runs.streaming import Processes

    files = PredictionFiles(args.input, args.output, args.probs, args.batch_size, args.chunk_size)
    for option, path in (("--output", args.output), ("--probs", args.probs)):
        if path:
            check_not_a_folders_own_file(path, option)
    files.check()
    processes = Processes.current()  # under accelerate launch, each process predicts on its own device
    loader = checkpoint_loader(args.device or processes.device, load_options(args))
    if args.run:
        rows = predict_run_file(args.run, files, loader)
    else:
        rows = predict_file(args.checkpoint, files, rule, loader)
    if processes.is_main:
        print(f"wrote {rows} rows to {args.output}")
    return 0
