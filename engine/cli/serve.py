"""`python -m engine.serve`: the OpenAI-compatible server and web UI (engine/server/) under uvicorn."""
import argparse
import sys

from engine.cli.common import add_model_arg, load_from_args, loaded_line
from engine.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.serve", description=__doc__)
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together in one batched forward")
    p.add_argument("--max-queue", type=int, default=32, help="requests that may wait for a place in the batch; "
                   "more are answered 429 with Retry-After")
    p.add_argument("--kv-budget", type=float, default=1024, help="MiB of KV cache kept for conversations (least "
                   "recently used caches are dropped and recomputed when needed)")
    p.add_argument("--ctx-size", type=int, default=None, help="context length per sequence (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: ENGINE_THREADS or all cores)")
    p.add_argument("--activations", choices=("float32", "int8"), default=None,
                   help="one-token mat-vec activations: float32 (default, exact) or int8 (opt-in, faster)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from engine.server import create_app
    try:
        llm = load_from_args(args)
        app = create_app(llm, max_batch=args.max_batch, max_queue=args.max_queue,
                         kv_budget=int(args.kv_budget * (1 << 20)))
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{loaded_line(llm)}; serving on http://{args.host}:{args.port}/ (OpenAI API under /v1)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
