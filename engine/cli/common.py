"""What the command lines share: their parser (help with defaults, --version), the model flag, the run flags and
their argparse types, loading a model from them and their exit status."""
import argparse
import re
import sys
from collections.abc import Callable

import engine
from engine.errors import ContextOverflowError, EngineError, InvalidRequestError
from engine.runtime.sampler import SamplingParams

MIN_CTX_SIZE = 16  # the smallest --ctx-size: a short prompt and its answer
EXIT_STATUS = """exit status: 0 on success; 2 for a bad flag or input (a value out of range, --ctx-size past the
model's context, a prompt that does not fit); 1 for other errors (a missing or corrupt model file, ...); 130 on
Ctrl-C."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; a flag's help ends with "(default: X)" unless it names its default
    itself or has none to show (None, or a switch's True / False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and not isinstance(action.default, bool) and \
            action.default != argparse.SUPPRESS
        if not action.option_strings or "default" in text or not shown:
            return text
        return f"{text} (default: %(default)s)"


def version_line() -> str:
    return f"engine {engine.__version__}"


def new_parser(prog: str, description: str, epilog: str = EXIT_STATUS) -> argparse.ArgumentParser:
    """An argument parser with HelpFormatter and --version."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=version_line())
    return p


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound), else argparse's error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return value
    return parse


def number_at_least(lo: float) -> Callable[[str], float]:
    """An argparse type: a finite number >= lo, else argparse's error naming the flag."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not lo <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {lo}, got {text!r}")
        return value
    return parse


def non_blank(value: str) -> str:
    """An argparse type: a string with something besides whitespace in it."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty (or only whitespace)")
    return value


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """--model, as every command that loads a model takes it."""
    p.add_argument("--model", default=None, metavar="ID", help="registry id, .gguf path, HF-style directory or HF "
                   "repo id (default: the embedded SmolLM2-135M-Instruct Q4_1)")


def add_load_args(p: argparse.ArgumentParser, per: str = "") -> None:
    """The flags of engine.load besides the model: context, threads, device, activations, kernels."""
    p.add_argument("--ctx-size", type=int_in(MIN_CTX_SIZE), default=None, metavar="N",
                   help=f"context length{per}, >= {MIN_CTX_SIZE} and at most the model's (default: the model's)")
    p.add_argument("--threads", type=int_in(1), default=None, metavar="N",
                   help="worker threads (default: ENGINE_THREADS or all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to compute (default: ENGINE_DEVICE or auto = CUDA when a GPU is usable)")
    p.add_argument("--activations", choices=("float32", "int8"), default=None,
                   help="one-token mat-vec activations: float32 (exact) or int8 (opt-in, faster; default: "
                        "ENGINE_ACTIVATIONS or float32)")
    p.add_argument("--kernels", choices=("numba", "numpy"), default=None,
                   help="CPU kernels: numba (compiled) or numpy (the reference operators; default: ENGINE_KERNELS "
                        "or numba)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Sampling and load flags shared by engine.generate and engine.chat."""
    SamplingParams.add_arguments(p)
    add_load_args(p)


def load_from_args(args):
    """engine.load with the model and load flags of a command line; ContextOverflowError naming --ctx-size when it
    is larger than the context the model was trained for."""
    llm = engine.load(args.model, n_ctx=args.ctx_size, threads=args.threads, activations=args.activations,
                      device=args.device, kernels=args.kernels)
    limit = llm.config.max_context
    if args.ctx_size is not None and args.ctx_size > limit:
        raise ContextOverflowError(f"--ctx-size {args.ctx_size} is larger than the model's context of {limit} "
                                   f"tokens; pass --ctx-size {limit} or less, or leave it out.")
    return llm


def loaded_line(llm) -> str:
    """What was loaded, how fast, and which kernels run (printed on stderr by the command lines)."""
    return (f"loaded {llm.source.id} ({llm.config.arch}, {llm.weight_bytes / 1e6:.0f} MB) in {llm.load_s:.2f} s; "
            f"{llm.runner.describe()}")


def in_flag_terms(e: EngineError) -> str:
    """An engine error's message in command-line terms: engine.load's n_ctx is --ctx-size here."""
    return re.sub(r"\bn_ctx\b(?: \(--ctx-size\))?", "--ctx-size", str(e))


def exit_status(run: Callable[[], int | None]) -> int:
    """run()'s exit status (0 when it returns None). An engine error becomes one "error: ..." line on stderr and
    status 2 for bad input (InvalidRequestError, ContextOverflowError) or 1, Ctrl-C "interrupted" and 130: a
    command line shows no traceback for either (see EXIT_STATUS)."""
    try:
        return run() or 0
    except EngineError as e:
        print(f"error: {in_flag_terms(e)}", file=sys.stderr)
        return 2 if isinstance(e, (InvalidRequestError, ContextOverflowError)) else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
