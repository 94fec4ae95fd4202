"""Run fuzz cases each in a forked child process with a wall-clock limit and an address-space limit, and sort
how each ended into outcome classes.

A target is a module with `cases(n: int, seed: int) -> list[tuple]` (small picklable descriptions, made in the
parent) and `run_case(*case) -> str` (run in the child: builds the input from its description, feeds it to the
engine, returns "ok", or "nan" when a model loaded and silently produced non-finite logits). The parent imports
the target before forking, so a child starts in milliseconds; the parent itself never runs a compiled kernel
(libgomp's thread pool does not survive a fork).

Outcomes: "ok" and "engine_error" (a typed engine.errors error) are what robust code does; "crash" (any other
exception), "hang" (over the time limit), "memory" (MemoryError under the address-space limit, or killed), "nan"
and "signal" (the child died of a signal) are defects.
"""
from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

GOOD = ("ok", "engine_error")
BAD = ("crash", "hang", "memory", "nan", "signal")


@dataclass(frozen=True)
class Result:
    """How one case ended. detail: the error type and message (and where a crash was raised), or a note."""
    outcome: str
    detail: str = ""


@dataclass
class Report:
    """Counts by outcome class and by error type, and the first few defects with their cases."""
    target: str
    seed: int
    outcomes: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    defects: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_bad(self) -> int:
        return sum(self.outcomes[o] for o in BAD)

    def add(self, case: tuple, result: Result) -> None:
        self.outcomes[result.outcome] += 1
        if result.outcome == "engine_error":
            self.errors[result.detail.split(":", 1)[0]] += 1
        elif result.outcome in BAD and len(self.defects) < 20:
            self.defects.append((case, result))

    def as_dict(self) -> dict:
        return {"target": self.target, "seed": self.seed, "cases": sum(self.outcomes.values()),
                "outcomes": dict(self.outcomes), "engine_errors": dict(self.errors),
                "defects": [{"case": repr(c), "outcome": r.outcome, "detail": r.detail} for c, r in self.defects],
                "seconds": round(self.seconds, 1)}

    def text(self) -> str:
        n = sum(self.outcomes.values())
        lines = [f"{self.target}: {n} cases (seed {self.seed}) in {self.seconds:.0f} s"]
        lines += [f"  {o:12s} {self.outcomes[o]}" for o in GOOD + BAD]
        lines += [f"    {name}: {k}" for name, k in self.errors.most_common()]
        lines += [f"  DEFECT {r.outcome}: {r.detail[:300]}\n    case {c!r}"[:600] for c, r in self.defects]
        return "\n".join(lines)


def _classify(run_case, case: tuple) -> Result:
    from engine.errors import EngineError

    try:
        out = run_case(*case)
    except EngineError as e:
        return Result("engine_error", f"{type(e).__name__}: {e}"[:500])
    except MemoryError as e:
        return Result("memory", f"MemoryError: {e}"[:500])
    except BaseException as e:  # noqa: BLE001 — every other exception is the defect being looked for
        frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" at {frame.filename}:{frame.lineno}" if frame else ""
        return Result("crash", f"{type(e).__name__}: {e}"[:400] + where)
    return Result("nan" if out == "nan" else "ok", str(out)[:200])


def _child(run_case, case: tuple, write_fd: int, mem_bytes: int) -> None:
    """In the forked child: limit memory, run the case, write the pickled Result, exit without cleanup."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        data = pickle.dumps(_classify(run_case, case))
    except BaseException as e:  # noqa: BLE001
        data = pickle.dumps(Result("crash", f"harness: {type(e).__name__}: {e}"))
    try:
        with os.fdopen(write_fd, "wb") as f:
            f.write(data)
    finally:
        os._exit(0)


def _finish(pid: int, data: bytes, timed_out: bool, timeout_s: float) -> Result:
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return Result("hang", f"over the {timeout_s:g} s limit")
    if data:
        return pickle.loads(data)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return Result("memory" if sig == signal.SIGKILL else "signal", f"killed by {signal.Signals(sig).name}")
    return Result("crash", f"child exited with status {os.waitstatus_to_exitcode(status)} and no result")


def run_cases(run_case, cases: list[tuple], jobs: int = 2, timeout_s: float = 10.0,
              mem_bytes: int = 4 << 30, on_result=None) -> list[Result]:
    """Run every case in its own forked child, up to jobs at once. on_result(case, result) is called as each
    ends. Returns the results in case order."""
    results: list[Result | None] = [None] * len(cases)
    running: dict[int, tuple] = {}  # read fd -> (index, pid, deadline, chunks)
    todo = iter(enumerate(cases))
    exhausted = False
    while running or not exhausted:
        while not exhausted and len(running) < jobs:
            nxt = next(todo, None)
            if nxt is None:
                exhausted = True
                break
            i, case = nxt
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(run_case, case, w, mem_bytes)
            os.close(w)
            running[r] = (i, pid, time.monotonic() + timeout_s, [])
        if not running:
            break
        wait = max(0.0, min(d for _, _, d, _ in running.values()) - time.monotonic())
        ready, _, _ = select.select(list(running), [], [], wait)
        now = time.monotonic()
        for fd in list(running):
            i, pid, deadline, chunks = running[fd]
            done = timed_out = False
            if fd in ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    chunks.append(chunk)
                else:
                    done = True
            if not done and now >= deadline:
                done = timed_out = True
            if done:
                os.close(fd)
                del running[fd]
                results[i] = _finish(pid, b"" if timed_out else b"".join(chunks), timed_out, timeout_s)
                if on_result is not None:
                    on_result(cases[i], results[i])
    return results


def campaign(target, name: str, n: int, seed: int, jobs: int = 2, timeout_s: float = 10.0,
             mem_bytes: int = 4 << 30) -> Report:
    """Run n cases of a target module (see the module docstring) and count their outcomes."""
    report = Report(name, seed)
    t0 = time.monotonic()
    run_cases(target.run_case, target.cases(n, seed), jobs, timeout_s, mem_bytes, on_result=report.add)
    report.seconds = time.monotonic() - t0
    return report
