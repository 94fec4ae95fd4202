"""A new user's first run, timed: README's first command on a fresh copy of the sources (no compiled kernels in any
cache) with an empty HOME, then the same command again (warm).

    python -m bench.first_run [--runs-warm 1] [--max-tokens 16]

Prints each output line with its time since start, and the seconds to the first token of each run. The model's
wheel is copied into the fresh HOME's engine cache when this machine has it, so the figures start "after the
model wheel is present"; otherwise the first run downloads it from PyPI (and says so).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "kernels", "models", "bench")
PROMPT = ["--prompt", "The capital of France is", "--raw"]


@dataclass
class Run:
    """One command's output: lines as (seconds since start, "out" | "err", text), when stdout's first byte came
    (None if never) and the exit status."""
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    first_token_s: float | None = None
    returncode: int | None = None
    total_s: float = 0.0


def fresh_copy(dest: Path) -> Path:
    """The packages' sources copied to dest/src without any __pycache__ (so numba's cache beside them is empty)."""
    src = dest / "src"
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def fresh_home(dest: Path) -> Path:
    """An empty HOME, holding only the embedded model's wheel when this machine's engine cache has it."""
    home = dest / "home"
    wheels = home / ".cache" / "engine" / "wheels"
    wheels.mkdir(parents=True)
    from engine.formats.hub import SMOLLM2_WHEEL, engine_cache_dir
    wheel = engine_cache_dir() / "wheels" / SMOLLM2_WHEEL
    if wheel.is_file():
        shutil.copy2(wheel, wheels / SMOLLM2_WHEEL)
    return home


def run_timed(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> Run:
    """Run cmd, timestamping every line of stdout and stderr as it arrives."""
    run, t0 = Run(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read(pipe, name: str) -> None:
        buf = b""
        while chunk := os.read(pipe.fileno(), 4096):
            now = time.perf_counter() - t0
            if name == "out" and run.first_token_s is None and chunk.strip():
                run.first_token_s = now
            buf += chunk
            *done, buf = buf.split(b"\n")
            run.lines.extend((now, name, line.decode(errors="replace")) for line in done)
        if buf:
            run.lines.append((time.perf_counter() - t0, name, buf.decode(errors="replace")))

    readers = [threading.Thread(target=read, args=(p, n)) for p, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for r in readers:
        r.start()
    try:
        run.returncode = proc.wait(timeout)
    finally:
        proc.kill()
        for r in readers:
            r.join()
    run.total_s = time.perf_counter() - t0
    return run


def first_run(workdir: Path, max_tokens: int = 16, warm_runs: int = 1) -> list[Run]:
    """The cold run, then warm_runs warm ones, of README's first command on a fresh copy with a fresh HOME."""
    src, home = fresh_copy(workdir), fresh_home(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "ENGINE_"))}
    env.update(HOME=str(home), PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "engine.generate", *PROMPT, "--max-tokens", str(max_tokens)]
    return [run_timed(cmd, src, env) for _ in range(1 + warm_runs)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate (default: 16)")
    p.add_argument("--runs-warm", type=int, default=1, help="warm runs after the cold one (default: 1)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="engine-first-run-") as d:
        runs = first_run(Path(d), args.max_tokens, args.runs_warm)
    for i, run in enumerate(runs):
        print(f"--- {'cold' if i == 0 else 'warm'} run (exit {run.returncode}, {run.total_s:.1f} s)")
        for t, name, text in run.lines:
            print(f"{t:7.2f} {name} {text}")
    seconds = [f"{r.first_token_s:.1f} s" if r.first_token_s is not None else "none" for r in runs]
    print(f"first token: cold {seconds[0]}, warm {', '.join(seconds[1:])}  (CPU: {_cpu()})")
    return 0 if all(r.returncode == 0 for r in runs) else 1


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
