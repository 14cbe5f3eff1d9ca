"""Predict a jsonl file with one or more checkpoints and write an official-format submission.

python inference.py --checkpoint OUT/fold_0/best [OUT/fold_1/best ...] --input test.jsonl --output submission.jsonl [--probs probs.jsonl]
"""

import argparse

from nikl_emotion.cli import entry_point, quiet_libraries
from nikl_emotion.errors import PipelineError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint folder(s), e.g. OUT/fold_*/best")
    parser.add_argument("--input", required=True, help="NIKL jsonl to predict (output may be \"\")")
    parser.add_argument("--output", required=True, help="submission jsonl to write")
    parser.add_argument("--probs", help="also write the (mean) probabilities here")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--thresholds", help="thresholds.json with one threshold per label (overrides --threshold)")
    parser.add_argument("--no_fallback", action="store_true", help="allow rows with no label")
    parser.add_argument("--strategy", choices=["hard", "soft"], default="hard", help="how several checkpoints combine")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        raise PipelineError(f"--threshold must be in (0, 1), got {args.threshold}")
    quiet_libraries()
    from nikl_emotion.prediction import predict_file
    from nikl_emotion.thresholds import load_thresholds

    threshold = load_thresholds(args.thresholds) if args.thresholds else args.threshold
    decisions = predict_file(
        args.checkpoint, args.input, args.output, args.probs, args.batch_size, threshold,
        not args.no_fallback, args.strategy, args.device,
    )
    print(f"wrote {len(decisions)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    entry_point(main)()
