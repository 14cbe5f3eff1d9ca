"""Predict a jsonl file with one or more checkpoints and write an official-format submission.

python inference.py --checkpoint OUT/fold_0/best [OUT/fold_1/best ...] --input test.jsonl --output submission.jsonl [--probs probs.jsonl]
"""

import argparse

from nikl_emotion.cli import add_decision_arguments, decision_threshold, quiet_libraries


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint folder(s), e.g. OUT/fold_*/best")
    parser.add_argument("--input", required=True, help="NIKL jsonl to predict (output may be \"\")")
    parser.add_argument("--output", required=True, help="submission jsonl to write")
    parser.add_argument("--probs", help="also write the (mean) probabilities here")
    parser.add_argument("--batch_size", type=int, default=128)
    add_decision_arguments(parser)
    parser.add_argument("--strategy", choices=["hard", "soft"], default="hard", help="how several checkpoints combine")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    args = parser.parse_args(argv)
    threshold = decision_threshold(args)
    quiet_libraries()
    from nikl_emotion.prediction import predict_file

    decisions = predict_file(
        args.checkpoint, args.input, args.output, args.probs, args.batch_size, threshold,
        not args.no_fallback, args.strategy, args.device,
    )
    print(f"wrote {len(decisions)} rows to {args.output}")
    return 0
