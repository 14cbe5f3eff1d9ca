"""Shared command-line plumbing: one-line `error: ...` messages and exit codes."""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.vocabulary import DEFAULT_STRATEGY, DEFAULT_VOTE_RULE, DEFAULT_VOTE_TIE, INFERENCE_DTYPES

__all__ = [
    "configure_logging",
    "command_parser",
    "quiet_libraries",
    "entry_point",
    "pop_option",
    "add_decision_arguments",
    "add_loading_arguments",
    "load_options",
    "decision_rule",
    "decision_options_given",
    "decision_threshold",
]


def command_parser(description: str) -> argparse.ArgumentParser:
    """A command's option parser: its docstring as help, and no abbreviations (`--out` must not mean `--output`:
    an option added later would silently change what an old command line means)."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )


def quiet_libraries() -> None:
    """Keep the console for the pipeline's own messages; warnings still show."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    configure_logging()


def configure_logging(training_args=None) -> None:
    """The pipeline's messages (the `nikl_emotion` loggers) as plain lines on stderr; results the user asked for
    (tables, paths) are the commands' prints on stdout. Rank-aware as the Trainer is: the main process logs at
    `--log_level` (`passive`, the default: info), the other ranks at `--log_level_replica` (default warning)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    level = "info"
    if training_args is not None:
        level = training_args.log_level if training_args.should_log else training_args.log_level_replica
    logging.getLogger("nikl_emotion").setLevel(logging.INFO if level == "passive" else level.upper())


def entry_point(main: Callable[[list[str]], int | None]) -> Callable[[], None]:
    """Run `main(argv)`; a `PipelineError` becomes `error: ...` on stderr and exit code 1."""

    @functools.wraps(main)
    def run() -> None:
        # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C, so half-written temporaries are removed
        stop = _StopOnSignal()
        previous = signal.signal(signal.SIGTERM, stop)
        _end_with_the_launcher()
        _exit_without_collecting()
        try:
            code = main(sys.argv[1:])
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except BrokenPipeError:  # e.g. `score.py ... | head -1`: the reader left, nothing went wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        finally:
            stop.unwound.set()
            signal.signal(signal.SIGTERM, previous)
        sys.exit(code or 0)

    return run


def _exit_without_collecting() -> None:
    """At the interpreter's exit, after every other exit handler (the first registered runs last), leave the
    objects alive then to the process's end (`gc.freeze`): the collector's last passes over torch's, transformers'
    and peft's module graph took ~2 s of every command's and worker's exit, the files being long written. (At exit
    only: a process that runs commands in a row, as the tests do, keeps collecting.)"""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


class _StopOnSignal:
    """The SIGTERM handler: raise SystemExit(128 + signal) where the program is, so it unwinds. A library's bare
    `except:` can swallow it (datasets' fingerprint hashing of a `map` does, and the job then ran on to the end of a
    20,000-row prediction): until the exit reaches the entry point the signal is delivered again every
    `_INSIST_SECONDS`, and after `_INSIST_TIMES` the process ends without unwinding (the next run writing the same
    output removes the temporaries it leaves)."""

    def __init__(self):
        self.unwound = threading.Event()
        self.insisting = False

    def __call__(self, signum, frame):
        if not self.insisting:
            self.insisting = True
            threading.Thread(target=self._insist, args=(signum,), daemon=True).start()
        sys.exit(128 + signum)

    def _insist(self, signum: int) -> None:
        for _ in range(_INSIST_TIMES):
            if self.unwound.wait(_INSIST_SECONDS):
                return
            os.kill(os.getpid(), signum)
        if not self.unwound.wait(_INSIST_SECONDS):
            os._exit(128 + signum)


_INSIST_SECONDS, _INSIST_TIMES = 2.0, 10


def _end_with_the_launcher() -> None:
    """A worker of `accelerate launch` (or torchrun) gets SIGTERM when its launcher dies, even by SIGKILL: otherwise
    the workers of a killed job run on, hold their GPUs and write the outputs a killed job must not leave. Linux
    only (prctl); a launcher already gone ends the worker at once."""
    if not sys.platform.startswith("linux") or not ("TORCHELASTIC_RUN_ID" in os.environ or _parent_is_accelerate()):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_is_accelerate() -> bool:
    """Started by `accelerate launch`'s simple launcher (`--cpu`, or one process): no torchrun variables, the
    launcher is the parent. A shell or nohup as the parent is left alone."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            words = [os.path.basename(word.decode(errors="replace")) for word in handle.read().split(b"\0")]
    except OSError:
        return False
    launcher_module = any(word.startswith("accelerate.commands.launch") for word in words)  # python -m ...
    return launcher_module or ("accelerate" in words and "launch" in words)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def pop_option(argv: list[str], names: tuple[str, ...]) -> int | None:
    """Remove `NAME N` (or `NAME=N`) from argv and return N; None when absent. For options the config parser
    does not know (they are not run settings)."""
    for position, token in enumerate(argv):
        name, equals, inline = token.partition("=")
        if name not in names:
            continue
        if equals:
            value, width = inline, 1
        elif position + 1 < len(argv):
            value, width = argv[position + 1], 2
        else:
            raise PipelineError(f"{name} needs a number")
        try:
            number = int(value)
        except ValueError:
            raise PipelineError(f"{name}: expected a whole number, got {value!r}") from None
        del argv[position : position + width]
        return number
    return None


def add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that turn probabilities into labels, shared by inference.py and ensemble.py."""
    parser.add_argument("--threshold", type=float, default=0.5, help="probability at or above which a label is on")
    parser.add_argument("--thresholds", help="thresholds.json with one threshold per label (overrides --threshold)")
    parser.add_argument("--no_fallback", action="store_true", help="allow rows with no label")


def decision_rule(args: argparse.Namespace, strategy: str = DEFAULT_STRATEGY):
    """The `DecisionRule` the command-line options describe (vote options where the command has them)."""
    from nikl_emotion.decisions.voting import DecisionRule

    return DecisionRule(
        strategy=getattr(args, "strategy", None) or strategy,
        threshold=decision_threshold(args),
        fallback=not args.no_fallback,
        vote_rule=getattr(args, "rule", None) or DEFAULT_VOTE_RULE,
        vote_tie=getattr(args, "tie", None) or DEFAULT_VOTE_TIE,
        min_votes=getattr(args, "min_votes", None),
        weights=getattr(args, "weights", None),
    )


def decision_options_given(args: argparse.Namespace) -> list[str]:
    """The decision options set away from their defaults (refused beside a saved rule, which replaces them)."""
    given = {
        "--strategy": getattr(args, "strategy", None) not in (None, DEFAULT_STRATEGY),
        "--threshold": args.threshold != 0.5,
        "--thresholds": bool(args.thresholds),
        "--no_fallback": args.no_fallback,
        "--rule": getattr(args, "rule", None) not in (None, DEFAULT_VOTE_RULE),
        "--tie": getattr(args, "tie", None) not in (None, DEFAULT_VOTE_TIE),
        "--weights": getattr(args, "weights", None) is not None,
        "--min_votes": getattr(args, "min_votes", None) is not None,
    }
    return [name for name, is_set in given.items() if is_set]


def decision_threshold(args: argparse.Namespace):
    """The threshold: one number, or the 8 per-label values of a `--thresholds` file (read and checked here)."""
    if args.thresholds:
        from nikl_emotion.decisions.thresholds import load_thresholds

        return load_thresholds(args.thresholds)
    return args.threshold  # its range is checked by DecisionRule


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """How a command that predicts loads its checkpoints: --device, --dtype, --trust_remote_code (`load_options`)."""
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=INFERENCE_DTYPES,
        default="auto",
        help="auto (default): each checkpoint as its run trained (its base's dtype and autocast, "
        "best/loading.json), so it reproduces the run's probabilities; fp32; bf16 or fp16: "
        "autocast, a decoder's weights also held in it (half the memory)",
    )
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the modelling code a checkpoint ships (custom-code models); only for code you trust",
    )


def load_options(args):
    """The `LoadOptions` of `add_loading_arguments`'s options (and --load_in_4bit where the command has it)."""
    from nikl_emotion.backends.precision import LoadOptions

    four_bit = getattr(args, "load_in_4bit", False)
    return LoadOptions(dtype=args.dtype, load_in_4bit=four_bit, trust_remote_code=args.trust_remote_code)
