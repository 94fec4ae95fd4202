"""Decode speed by kernel thread count, on a quiet machine and beside competing busy processes: does the default
thread count (every usable core) lose to fewer threads when the machine is loaded?

    python -m bench.threads [--model smollm2] [--threads 1 2] [--compete 0 1] [--spin 100000 10000]

Each (spin, compete, threads) case runs in a fresh process (libgomp reads GOMP_SPINCOUNT once per process): it
loads the model, decodes --tokens greedy tokens after a short prompt, best of --repeats, while `compete` other
processes spin on the CPU. Prints a table of decode tok/s.
"""
import argparse
import itertools
import os
import subprocess
import sys
import time

PROMPT = "Once upon a time, in a small village by the sea,"


def child(model: str, threads: int, tokens: int, repeats: int) -> float:
    """Best decode tok/s of `repeats` greedy generations of `tokens` tokens, threads kernel threads."""
    import engine
    llm = engine.load(model, threads=threads)
    best = 0.0
    for _ in range(repeats):
        for _ in llm.generate(PROMPT, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0):
            pass
        best = max(best, llm.last_stats.decode_tps)
    return best


def measure(model: str, threads: int, compete: int, spin: str | None, tokens: int, repeats: int) -> float:
    """child() in a fresh process with GOMP_SPINCOUNT=spin (None: the engine's default) beside `compete` busy
    processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "ENGINE_THREADS")}
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(compete)]
    try:
        time.sleep(0.5 if busy else 0)
        out = subprocess.run([sys.executable, "-m", "bench.threads", "--child", "--model", model, "--threads",
                              str(threads), "--tokens", str(tokens), "--repeats", str(repeats)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model to load (default: smollm2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                   help="kernel thread counts to compare (default: 1 and every core)")
    p.add_argument("--compete", type=int, nargs="+", default=[0, 1],
                   help="numbers of competing busy processes (default: 0 1)")
    p.add_argument("--spin", nargs="+", default=[None],
                   help="GOMP_SPINCOUNT values to compare (default: the engine's own setting)")
    p.add_argument("--tokens", type=int, default=64, help="decoded tokens per run (default: 64)")
    p.add_argument("--repeats", type=int, default=2, help="runs per case, best kept (default: 2)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(child(args.model, args.threads[0], args.tokens, args.repeats))
        return 0
    print(f"# {args.model}, decode tok/s, best of {args.repeats} x {args.tokens} tokens, {os.cpu_count()} CPUs")
    print("| GOMP_SPINCOUNT | competing processes | " + " | ".join(f"{t} threads" for t in args.threads) + " |")
    print("|---|---|" + "---|" * len(args.threads))
    for spin, compete in itertools.product(args.spin, args.compete):
        speeds = [measure(args.model, t, compete, spin, args.tokens, args.repeats) for t in args.threads]
        print(f"| {spin or 'default'} | {compete} | " + " | ".join(f"{s:.1f}" for s in speeds) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
