"""Combine fold (or model) predictions into one submission.

python ensemble.py --inputs OUT/fold_*/test_probs.jsonl --reference test.jsonl --output submission.jsonl
python ensemble.py --inputs sub_a.jsonl sub_b.jsonl sub_c.jsonl --output submission.jsonl --rule reference

python ensemble.py --inputs OUT/fold_*/test_probs.jsonl --reference test.jsonl --output submission.jsonl \
    --strategy soft --thresholds OUT/thresholds.json

Inputs are probability files (from train.py/inference.py) or submission files; all must list the same ids in the
same order. Hard voting: per label, on when more than half the inputs vote for it; a tie (exactly half) follows
--tie (positive by default). --rule reference applies the reference pipeline's rule instead, --min_votes K a fixed
bar of K votes. --weights gives each input that many votes (and its share of the soft mean). Soft voting: mean
probability, then the threshold(s). Probabilities become decisions at --threshold, or at the per-label thresholds
of a thresholds.json (fitted by train.py on out-of-fold predictions). --decision OUT/decision.json takes a run's
saved rule (the one its submission.jsonl was made with) instead of these options.

python ensemble.py --runs OUT_A OUT_B --strategy stack --output_dir STACK
python ensemble.py --runs OUT_A OUT_B --strategy stack --output submission.jsonl [--probs probs.jsonl]

Stacking: finished train.py runs of the same training files, folds and test file; per label a logistic regression
on the runs' logits, fitted on their out-of-fold probabilities only (its nested OOF score is printed beside each
run's), applied to each fold's test probabilities; the folds' stacked probabilities are then decided by the rule
chosen on the stack's nested OOF (--stack_decision auto, the default: hard or soft vote, at --threshold or at
per-label thresholds fitted on the stacked OOF rows) or voted at --threshold(s) (--stack_decision fixed).
--output_dir writes the stack as a folder (STACK/submission.jsonl, decision.json, test_probs.jsonl and stack.json:
the member runs and the stacker's weights) that `inference.py --run STACK` serves on any file; --output writes only
the submission.
"""

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.vocabulary import (
    DECISION_MODES,
    DEFAULT_DECISION_MODE,
    DEFAULT_STRATEGY,
    DEFAULT_VOTE_RULE,
    DEFAULT_VOTE_TIE,
    STACK_STRATEGY,
    STRATEGIES,
    VOTE_RULES,
    VOTE_TIES,
)
from nikl_emotion.commands.cli import (
    add_decision_arguments,
    command_parser,
    decision_options_given,
    decision_rule,
    quiet_libraries,
)
from nikl_emotion.decisions.decision import describe_choice

__all__ = [
    "main",
]


def _build_parser():
    parser = command_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", help="probability or submission jsonl files")
    source.add_argument("--runs", nargs="+", help="finished train.py runs to stack (with --strategy stack)")
    parser.add_argument("--probs", help="--strategy stack: also write the stacked probabilities (mean of the folds)")
    parser.add_argument(
        "--stack_decision",
        choices=DECISION_MODES,
        default=DEFAULT_DECISION_MODE,
        help="--strategy stack: auto chooses hard/soft vote and OOF-fitted thresholds on the stack's "
        "nested OOF (as train.py's decision: auto); fixed votes at --threshold(s)",
    )
    parser.add_argument("--output", help="submission jsonl to write")
    parser.add_argument(
        "--output_dir", help="--strategy stack: write the stack as a servable folder (inference.py --run)"
    )
    parser.add_argument(
        "--strategy",
        choices=[*STRATEGIES, STACK_STRATEGY],
        default=DEFAULT_STRATEGY,
        help="hard: vote decisions; soft: mean probability; stack: a stacker over --runs",
    )
    parser.add_argument("--rule", choices=VOTE_RULES, default=DEFAULT_VOTE_RULE, help="hard-vote rule")
    parser.add_argument(
        "--tie", choices=VOTE_TIES, default=DEFAULT_VOTE_TIE, help="majority rule: a label with exactly half the votes"
    )
    parser.add_argument("--weights", type=float, nargs="+", help="one positive weight per input")
    parser.add_argument("--min_votes", type=float, help="hard: a label needs at least this many (weighted) votes")
    add_decision_arguments(parser)
    parser.add_argument(
        "--decision", help="a run's decision.json: vote by the rule saved with it (replaces the options above)"
    )
    parser.add_argument("--align_by_id", action="store_true", help="accept inputs with the same ids in another order")
    parser.add_argument("--reference", help="the predicted input jsonl; needed when every input is a probability file")
    return parser


def main(argv: list[str]) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _check_option_pairs(parser, args)
    from nikl_emotion.folders.folder_kind import check_not_a_folders_own_file

    for option, path in (("--output", args.output), ("--probs", args.probs)):
        if path:
            check_not_a_folders_own_file(path, option)
    if args.runs:
        return _stack(args)
    if args.decision and decision_options_given(args):
        parser.error(f"--decision replaces {', '.join(decision_options_given(args))}: give one or the other")
    from nikl_emotion.decisions.voting import DecisionRule, ensemble_files

    rule = DecisionRule.load(args.decision) if args.decision else decision_rule(args)
    quiet_libraries()
    decisions = ensemble_files(args.inputs, args.output, rule, reference_path=args.reference, align=args.align_by_id)
    print(f"wrote {len(decisions)} rows voted from {len(args.inputs)} inputs to {args.output}")
    return 0


def _check_option_pairs(parser, args) -> None:
    """The options that go together (stack or vote, one output), refused as argparse refuses a usage error."""
    if (args.strategy == STACK_STRATEGY) != bool(args.runs):
        parser.error("--runs goes with --strategy stack, and --strategy stack with --runs")
    if args.runs and (args.weights or args.min_votes or args.decision or args.reference or args.align_by_id):
        parser.error(
            "--strategy stack fits its own weights and takes the runs' test file: drop --weights, "
            "--min_votes, --decision, --reference and --align_by_id"
        )
    if args.probs and not args.runs:
        parser.error("--probs goes with --strategy stack")
    if args.output_dir and not args.runs:
        parser.error("--output_dir goes with --strategy stack (a stack folder); other votes write --output")
    if bool(args.output) == bool(args.output_dir):
        parser.error("give --output FILE" + (" or --output_dir DIR (not both)" if args.runs else ""))
    if args.output_dir and args.probs:
        parser.error("--output_dir writes the stacked probabilities itself (DIR/test_probs.jsonl): drop --probs")


def _stack(args) -> int:
    from nikl_emotion.runs.finished_run import describe_oof_exposure
    from nikl_emotion.runs.stack_run import stack_files, stacked_oof_exposure

    args.strategy = DEFAULT_STRATEGY  # the folds' stacked probabilities are decided at --threshold(s) and voted
    rule = decision_rule(args)
    quiet_libraries()
    choose = args.stack_decision == DEFAULT_DECISION_MODE
    if choose and args.thresholds:
        raise PipelineError(
            "--thresholds: the stack fits its own with --stack_decision auto; add --stack_decision "
            "fixed to vote at these"
        )
    result = stack_files(args.runs, args.output, rule, args.probs, choose=choose, output_dir=args.output_dir)
    for name, scored in result["scores"].items():
        print(f"OOF micro-F1 {scored['micro_f1']:.4f}  macro-F1 {scored['macro_f1']:.4f}  {name}")
    print(f"fitted and scored on {describe_oof_exposure(stacked_oof_exposure(result['oof_exposures']))}")
    if "decision" in result:
        print(describe_choice(result["decision"]))
    where = (
        args.output
        or f"{args.output_dir} (serve it with: python inference.py --run {args.output_dir} --input FILE --output OUT)"
    )
    print(f"wrote {len(result['decisions'])} rows stacked from {len(args.runs)} runs to {where}")
    return 0
