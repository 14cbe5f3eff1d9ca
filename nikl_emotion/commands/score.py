"""Score a submission against gold labels with the official metric (micro-F1 over the N×8 matrix).

python score.py GOLD.jsonl PRED.jsonl [--per-label] [--json]
"""

import json

from nikl_emotion.commands.cli import command_parser, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("gold", help="jsonl with gold labels")
    parser.add_argument("pred", help="submission jsonl (rows matched by id)")
    parser.add_argument("--per-label", action="store_true", help="also print precision, recall and support per label")
    parser.add_argument("--json", action="store_true", help="print the full result as one JSON line (last line)")
    args = parser.parse_args(argv)
    quiet_libraries()
    from nikl_emotion.base.labels import LABELS
    from nikl_emotion.decisions.metrics import score_files

    result = score_files(args.gold, args.pred)
    print(f"rows {result['num_rows']}  micro_f1 {result['micro_f1']:.4f}  macro_f1 {result['macro_f1']:.4f}")
    per_label = result["per_label"]
    if args.per_label:
        print(f"{'label':>12}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}")
        for label in LABELS:
            m = per_label[label]
            print(f"{label:>12}  {m['precision']:9.4f}  {m['recall']:9.4f}  {m['f1']:9.4f}  {m['support']:7d}")
    else:
        print("  ".join(f"{label} {per_label[label]['f1']:.4f}" for label in LABELS))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return 0
