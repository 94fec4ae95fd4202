"""Which groups of compiled kernels numba's cache already holds for this CPU, so that a first run says what it
compiles, and how long that takes, before the wait, and a warm run says nothing.

numba compiles on first call and keeps the machine code in its cache (beside kernels/cpu, or NUMBA_CACHE_DIR);
it cannot tell ahead of a call whether that call will compile. A group of kernels (one weight type's, the small
operators) is recorded as compiled in `engine-compiled.json` in that cache directory once its first calls
returned, under a fingerprint of everything numba's cache depends on: the kernels' source, numba's and
llvmlite's versions, Python's, and the CPU's name and features.
"""
import functools
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numba

from kernels.cpu import quant_kernels

RECORD = "engine-compiled.json"
_lock = threading.Lock()


@functools.cache
def fingerprint() -> str:
    """A digest of what numba's cached code depends on: kernels/cpu's sources, versions and the CPU."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    features = sorted(k for k, on in llvm.get_host_cpu_features().items() if on)
    h.update(repr((numba.__version__, llvmlite.__version__, sys.version, llvm.get_host_cpu_name(),
                   features, os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES"))).encode())
    return h.hexdigest()[:16]


def _record_path() -> Path:
    return Path(quant_kernels.block_sums.stats.cache_path) / RECORD


def _read() -> dict:
    try:
        data = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compiled(group: str) -> bool:
    """Whether the group's kernels were compiled into numba's cache under the current fingerprint."""
    return _read().get(group) == fingerprint()


def _mark(group: str) -> None:
    """Record the group as compiled (atomically; a cache directory that cannot be written records nothing, and
    numba then recompiles on every run anyway)."""
    with _lock:
        data = _read()
        data[group] = fingerprint()
        path = _record_path()
        try:
            fd, tmp = tempfile.mkstemp(prefix=RECORD, dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError:
            return


def run_group(group: str, about_s: int, run: Callable[[], None], say: Callable[[str], None]) -> None:
    """run() the first calls of a group of kernels; when the cache lacks them, say so first (with about_s, the
    compile time on a 2-core machine) and record them once compiled."""
    if compiled(group):
        run()
        return
    say(f"compiling {group} for this CPU (first run only, about {about_s} s) ...")
    t0 = time.perf_counter()
    run()
    _mark(group)
    say(f"compiled {group} in {time.perf_counter() - t0:.1f} s (cached for later runs)")
