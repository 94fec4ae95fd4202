"""How many kernel threads a CPU forward should use now: all of its device's while the process gets its cores,
fewer while other processes take some.

A parallel kernel waits for its slowest thread, so one kernel thread that the OS deschedules for a busy neighbour
stalls every launch (~120 per token): on 2 cores beside one busy process, 2 threads decoded SmolLM2 at 3 tok/s
where 1 thread kept 55. The sign is cheap to read: a forward on n threads that got its cores used about n CPU
seconds per second of wall time (spinning workers count), a contended one much less. CoreShare drops a thread when
that ratio stays low and tries one more again, with growing pauses, when the system's run queue says a core is
free (/proc/loadavg's running tasks) — keeping it if the ratio stays high.
"""
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from kernels.device import usable_cores

T = TypeVar("T")
LOW_USE = 0.75       # CPU seconds per wall second per thread below which a forward counts as contended
HIGH_USE = 0.85      # ... at or above which a tried extra thread is kept
WINDOW = 2           # forwards judged together after each change: all below LOW_USE drop a thread
MIN_WALL_S = 0.002   # shorter forwards are not judged: clock resolution and start-up noise
FIRST_PAUSE_S, MAX_PAUSE_S = 1.0, 30.0


def _others_running() -> int | None:
    """Runnable tasks in the system other than the reader (/proc/loadavg's "running/total"), None if unknown."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return None


class CoreShare:
    """The kernel thread count of CPU forwards, adapted to contention. Not thread-safe: runners call it under
    their process-wide compute lock (engine.runtime.runner.DirectRunner.compute_lock)."""

    def __init__(self, cores: int | None = None, clock: Callable[[], float] = time.monotonic,
                 others_running: Callable[[], int | None] = _others_running):
        self.cores = cores or usable_cores()
        self.allowed = self.cores  # threads a forward may use now (capped by its device's own count)
        self._clock, self._others_running = clock, others_running
        self._uses: deque[float] = deque(maxlen=WINDOW)
        self._pause_s = FIRST_PAUSE_S
        self._next_try = 0.0
        self._trying = False

    def threads(self, wanted: int) -> int:
        """Threads for the next forward of a device that wants `wanted`; may try one more than now allowed."""
        if self.allowed < min(wanted, self.cores) and self._clock() >= self._next_try:
            others = self._others_running()
            if others is None or others + self.allowed < self.cores:
                self.allowed += 1
                self._trying = True
                self._uses.clear()
            else:
                self._next_try = self._clock() + self._pause_s
        return max(1, min(wanted, self.allowed))

    def observe(self, threads: int, wall_s: float, cpu_s: float) -> None:
        """A forward on `threads` threads took wall_s seconds and the process cpu_s CPU seconds."""
        if threads < 2 or wall_s < MIN_WALL_S:
            return
        self._uses.append(cpu_s / (wall_s * threads))
        if len(self._uses) < WINDOW:
            return
        if max(self._uses) < LOW_USE:
            self.allowed = threads - 1
            self._pause_s = min(MAX_PAUSE_S, self._pause_s * 2) if self._trying else FIRST_PAUSE_S
            self._next_try = self._clock() + self._pause_s
            self._trying = False
            self._uses.clear()
        elif min(self._uses) >= HIGH_USE and self._trying:
            self._trying = False
            self._pause_s = FIRST_PAUSE_S

    def run(self, device, forward: Callable[[], T]) -> T:
        """forward() on the calling thread after giving it the thread count to use now (device: a compiled CPU
        kernels.device.Device, which enter()s it), observed."""
        n = self.threads(device.threads)
        device.enter(n)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = forward()
        self.observe(n, time.perf_counter() - wall0, time.process_time() - cpu0)
        return out
