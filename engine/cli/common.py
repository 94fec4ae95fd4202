"""What the command lines share: the model flag, the run flags, loading a model from them and their exit status."""
import argparse
import sys
from collections.abc import Callable

import engine
from engine.errors import EngineError
from engine.runtime.sampler import SamplingParams


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """--model, as every command that loads a model takes it."""
    p.add_argument("--model", default=None, help="registry id, .gguf path, HF-style directory or HF repo id "
                   "(default: the embedded SmolLM2-135M-Instruct Q4_1)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Sampling, context and thread flags shared by engine.generate and engine.chat."""
    SamplingParams.add_arguments(p)
    p.add_argument("--ctx-size", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: ENGINE_THREADS or all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to compute (default: ENGINE_DEVICE or auto = CUDA when a GPU is usable)")
    p.add_argument("--activations", choices=("float32", "int8"), default=None,
                   help="one-token mat-vec activations: float32 (default, exact) or int8 (opt-in, faster; "
                        "default: ENGINE_ACTIVATIONS)")
    p.add_argument("--kernels", choices=("numba", "numpy"), default=None,
                   help="CPU kernels: numba (compiled, default) or numpy (the reference operators; default: "
                        "ENGINE_KERNELS)")


def load_from_args(args):
    """engine.load with the model, context, thread, activation and device flags of a command line (flags a
    command does not define keep their defaults)."""
    return engine.load(args.model, n_ctx=args.ctx_size, threads=args.threads,
                       activations=getattr(args, "activations", None), device=getattr(args, "device", None),
                       kernels=getattr(args, "kernels", None))


def loaded_line(llm) -> str:
    """What was loaded, how fast, and which kernels run (printed on stderr by the command lines)."""
    return (f"loaded {llm.source.id} ({llm.config.arch}, {llm.weight_bytes / 1e6:.0f} MB) in {llm.load_s:.2f} s; "
            f"{llm.runner.describe()}")


def exit_status(run: Callable[[], int | None]) -> int:
    """run()'s exit status (0 when it returns None). An engine error becomes one "error: ..." line on stderr and
    status 1, Ctrl-C "interrupted" and 130: a command line shows no traceback for either."""
    try:
        return run() or 0
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
