"""`python -m engine.serve`: the OpenAI-compatible server and web UI (engine/server/) under uvicorn, on a socket
bound before the model loads (a busy port is reported at once)."""
import argparse
import errno
import socket
import sys

from engine.chat.sessions_db import SessionsDB, default_sessions_db
from engine.cli.common import (add_load_args, add_model_arg, exit_status, int_in, load_from_args, loaded_line,
                               new_parser, number_at_least)

DESCRIPTION = """Serve a language model over HTTP: an OpenAI-compatible API under /v1 (chat completions,
completions, models) and a chat web UI at /. Needs the serve extra: pip install -e '.[serve]'."""
EXIT_STATUS = """exit status: 0 after Ctrl-C; 1 when the port is in use, the serve extra is missing or the model
cannot load; 2 for a bad flag (a value out of range, --ctx-size past the model's context)."""
# llama.cpp's server and vLLM generate until the end of the context when a request has no max_tokens, so their
# users expect an answer never to be cut short; but a small model that rambles or loops then runs for minutes
# (SmolLM2's 8192 tokens). 2048 is well past complete answers (SmolLM2's "Tell me a story." ended by itself after
# 290-630 tokens in 13 runs of 16) and ends the other 3, which loop or ramble, within a minute instead of four.
MAX_TOKENS_DEFAULT = 2048


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m engine.serve", DESCRIPTION, EXIT_STATUS)
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 is this machine only, "
                   "0.0.0.0 every network interface")
    p.add_argument("--port", type=int_in(0, 65535), default=8000, metavar="N", help="port to listen on; 0: any free "
                   "port, shown when serving starts")
    p.add_argument("--max-batch", type=int_in(1), default=8, metavar="N",
                   help="sequences decoded together in one batched forward")
    p.add_argument("--max-queue", type=int_in(0), default=32, metavar="N", help="requests that may wait for a "
                   "place in the batch; more are answered 429 with Retry-After")
    p.add_argument("--kv-budget", type=number_at_least(0), default=1024, metavar="MiB", help="MiB of KV cache kept "
                   "for conversations; the least recently used caches are dropped, and recomputed when needed")
    p.add_argument("--max-tokens-default", type=int_in(0), default=MAX_TOKENS_DEFAULT, metavar="N", help="most "
                   "tokens an API request without max_tokens generates (at most the rest of the context); 0: the "
                   "rest of the context. A request's own max_tokens is honoured up to the context")
    p.add_argument("--sessions-db", default=None, metavar="PATH", help="SQLite file that keeps the UI's "
                   "conversations across restarts; :memory: keeps them in this process only (default: "
                   "$ENGINE_DATA/sessions.sqlite3, else $XDG_DATA_HOME/engine/sessions.sqlite3, else "
                   "~/.local/share/engine/sessions.sqlite3)")
    add_load_args(p, per=" per sequence")
    return p


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (as uvicorn binds one); OSError when it cannot."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def _listen_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (Errno {e.errno}): pass --port N (0: any free port)"
    return f"cannot listen on {host}:{port} ({e}): check --host and --port"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from engine.server import create_app
    except ImportError as e:
        print(f"error: {e}; the server needs the serve extra: pip install -e '.[serve]'", file=sys.stderr)
        return 1
    try:
        sock = listen(args.host, args.port)
    except OSError as e:
        print(f"error: {_listen_error(args.host, args.port, e)}", file=sys.stderr)
        return 1

    def serve() -> None:
        db = SessionsDB(args.sessions_db or default_sessions_db())  # a bad file fails before the model loads
        print(f"sessions: {db.path} ({len(db.sessions())} saved)", file=sys.stderr, flush=True)
        llm = load_from_args(args)
        app = create_app(llm, max_batch=args.max_batch, max_queue=args.max_queue,
                         kv_budget=int(args.kv_budget * (1 << 20)), sessions_db=db,
                         model_id=args.model, max_tokens_default=args.max_tokens_default or None)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        print(f"{loaded_line(llm)}; serving on {url} (OpenAI API under /v1)", file=sys.stderr, flush=True)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        except KeyboardInterrupt:  # the Ctrl-C uvicorn shut down on, raised again: the way to stop a server
            pass

    with sock:
        return exit_status(serve)
