"""Where and how a model computes: a `Device`, made once per loaded model and handed to the model and the ops.

It replaces process-wide switches, so two models loaded with different devices (compiled and NumPy kernels,
float32 and int8 activations, different thread counts, the CPU and a GPU) run side by side in one process.

    dev = select_device("cpu", kernels="numba", activations="int8", threads=2)
    dev.xp            # numpy (cpu) or cupy (cuda): the module arrays are allocated with
    dev.to_host(a)    # a NumPy array of a
    dev.enter()       # on the thread about to compute: its kernel thread counts (runners call it)
"""
import os
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy

from kernels import cpu, cuda
from kernels.errors import DeviceError, InvalidRequestError

KINDS = ("cpu", "cuda")
KERNELS = ("numba", "numpy")
ACTIVATIONS = ("float32", "int8")


@dataclass(frozen=True)
class Device:
    """kind: "cpu" or "cuda". kernels (CPU): "numba", the compiled kernels of kernels/cpu, or "numpy", the
    reference code of kernels/ops.py. activations (CPU one-token mat-vec): "float32" (exact) or "int8" (opt-in,
    faster; kernels/cpu/int8_kernels.py). threads (CPU): kernel worker threads, >= 1."""
    kind: str = "cpu"
    kernels: str = "numba"
    activations: str = "float32"
    threads: int = os.cpu_count() or 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DeviceError(f"device {self.kind!r} is not one of auto, cpu, cuda (--device / ENGINE_DEVICE).")
        for field, value, allowed in (("kernels", self.kernels, KERNELS), ("activations", self.activations,
                                                                          ACTIVATIONS)):
            if value not in allowed:
                raise InvalidRequestError(f"{field} {value!r} is not one of {', '.join(allowed)} (--{field} / "
                                          f"ENGINE_{field.upper()}).", param=field)
        if self.kernels == "numba" and not cpu.available:
            object.__setattr__(self, "kernels", "numpy")  # numba missing or broken: the reference path runs
        if not isinstance(self.threads, int) or self.threads < 1:
            raise InvalidRequestError(f"threads must be a positive integer, got {self.threads!r} (--threads / "
                                      "ENGINE_THREADS).", param="threads")

    @property
    def compiled(self) -> bool:
        """Whether the CPU ops run the compiled kernels of kernels/cpu."""
        return self.kind == "cpu" and self.kernels == "numba"

    @property
    def int8(self) -> bool:
        """Whether the CPU one-token mat-vec quantizes its activations to int8."""
        return self.compiled and self.activations == "int8"

    @cached_property
    def xp(self):
        """The array module: numpy, or cupy on a GPU."""
        if self.kind == "cuda":
            import cupy
            return cupy
        return numpy

    def to_host(self, a) -> numpy.ndarray:
        """A NumPy array of a (copied from the GPU when a is a device array)."""
        return a.get() if cuda.takes(a) else numpy.asarray(a)

    def enter(self, threads: int | None = None) -> None:
        """Give the calling thread this device's kernel threads (or `threads`, fewer, when other processes take
        cores: engine.runtime.cores) before it computes: numba's count is per thread; BLAS's is per process, so it
        is set on every call (cheap when unchanged): one thread beside the compiled kernels, whose own threads do
        the work (OpenBLAS workers spin after each call and would starve them), `threads` for the NumPy path."""
        if self.kind != "cpu":
            return
        if self.compiled:
            import numba
            numba.set_num_threads(min(threads or self.threads, self.threads, numba.config.NUMBA_NUM_THREADS))
        for lib in _blas():
            n = 1 if self.compiled else self.threads
            if lib.num_threads != n:
                lib.set_num_threads(n)

    def describe(self) -> str:
        """One line saying which compute path runs."""
        if self.kind == "cuda":
            return "kernels: CUDA (CuPy RawKernels)"
        if self.compiled:
            acts = "int8 activations (opt-in)" if self.int8 else "float32 activations"
            return f"kernels: numba fused quantized mat-vec, {acts}, {self.threads} threads"
        return f"kernels: NumPy reference, {self.threads} BLAS threads (slow; install numba for the fast path)"


CPU = Device()  # the default of every op: compiled kernels when numba is there, float32 activations, every core

_blas_lock = threading.Lock()
_blas_libs: list | None = None


def _blas() -> list:
    """threadpoolctl's controllers of the BLAS libraries NumPy loaded (found once)."""
    global _blas_libs
    with _blas_lock:
        if _blas_libs is None:
            from threadpoolctl import ThreadpoolController
            _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
        return _blas_libs


def select_device(device: str | None = None, kernels: str | None = None, activations: str | None = None,
                  threads: int | None = None) -> Device:
    """The Device a model is loaded onto. None reads the environment: ENGINE_DEVICE ("auto", the default: CUDA
    when CuPy sees a GPU; "cpu"; "cuda"), ENGINE_KERNELS ("numba" default, "numpy"), ENGINE_ACTIVATIONS
    ("float32" default, "int8"), ENGINE_THREADS (default: every usable core, usable_cores(); more are capped)."""
    kind = (device or os.environ.get("ENGINE_DEVICE") or "auto").lower()
    if kind == "auto":
        kind = "cuda" if cuda.available() else "cpu"
    elif kind == "cuda" and not cuda.available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is usable here (CuPy missing or no device "
                          "seen); install the GPU extra (pip install -e .[cuda]) on a machine with an NVIDIA GPU "
                          "and driver, or use --device cpu.")
    cores = usable_cores()
    threads = threads or _env_int("ENGINE_THREADS") or cores
    dev = Device(kind, kernels or os.environ.get("ENGINE_KERNELS") or "numba",
                 activations or os.environ.get("ENGINE_ACTIVATIONS") or "float32",
                 min(threads, cores) if isinstance(threads, int) else threads)
    if dev.compiled:
        cpu.configure_openmp()
    return dev


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity (taskset, a container's cpuset), capped by a cgroup CPU
    quota (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us) rounded down, at least 1. More kernel threads than
    that would be descheduled or throttled in the middle of a parallel kernel, which every thread then waits for."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cores, int(quota)) if quota is not None else cores)


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup's quota (None: no quota, or no cgroup file to read)."""
    for path, read in ((cgroup / "cpu.max", lambda t: t.split()),
                       (cgroup / "cpu" / "cpu.cfs_quota_us",
                        lambda t: [t.strip(), (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()])):
        try:
            quota, period = read(path.read_text())[:2]
            if quota in ("max", "-1"):
                return None
            return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
        except (OSError, ValueError):
            continue
    return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"{name}={value!r} is not an integer.", param=name.lower()) from None
