"""The array module (`xp`): NumPy on the CPU, CuPy on a GPU. Chosen once at start-up with `use()`.

Model code allocates through `backend.xp` and calls only `kernels.ops`, so swapping the module needs no model change.
"""
import numpy

xp = numpy
name = "numpy"


def use(module_name: str) -> None:
    """Select "numpy" or "cupy" for every array the engine allocates from now on."""
    global xp, name
    if module_name == "numpy":
        xp, name = numpy, "numpy"
    elif module_name == "cupy":
        import cupy
        xp, name = cupy, "cupy"
    else:
        raise ValueError(f"unknown array module {module_name!r}; use 'numpy' or 'cupy'")


def select_device(device: str | None) -> str:
    """Choose where the engine computes, once, before a model loads: "cpu", "cuda", or "auto" (CUDA when CuPy sees
    a GPU). None reads ENGINE_DEVICE (default "auto"). Sets the array module; returns "cpu" or "cuda"."""
    import os
    from kernels.errors import DeviceError
    from kernels import cuda
    device = (device or os.environ.get("ENGINE_DEVICE") or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not one of auto, cpu, cuda (--device / ENGINE_DEVICE).")
    if device == "auto":
        device = "cuda" if cuda.available() else "cpu"
    elif device == "cuda" and not cuda.available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is usable here (CuPy missing or no device "
                          "seen); install the GPU extra (pip install -e .[cuda]) on a machine with an NVIDIA GPU "
                          "and driver, or use --device cpu.")
    use("cupy" if device == "cuda" else "numpy")
    return device


def to_host(a):
    """A NumPy array of a (copied from the GPU when a is a CuPy array)."""
    return a.get() if name == "cupy" and hasattr(a, "get") else numpy.asarray(a)


def set_threads(n: int | None) -> int:
    """Limit BLAS and the compiled kernels to n worker threads (None: all cores). Returns the count in force."""
    import os
    from threadpoolctl import threadpool_limits
    n = max(1, min(n or os.cpu_count() or 1, os.cpu_count() or 1))
    from kernels import cpu
    if cpu.available:  # the compiled kernels own the threads; BLAS stays at one (see kernels/cpu)
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    else:
        threadpool_limits(n, user_api="blas")
    return n


def set_activations(kind: str | None) -> str:
    """Activations of the one-token mat-vec: "float32" (default, exact) or "int8" (opt-in, faster; see
    kernels/cpu/int8_kernels.py). None keeps ENGINE_ACTIVATIONS or the default. Returns the kind in force."""
    from kernels import cpu
    kind = kind or cpu.activations
    if kind not in cpu.ACTIVATION_KINDS:
        from kernels.errors import InvalidRequestError
        raise InvalidRequestError(f"activations {kind!r} is not one of {', '.join(cpu.ACTIVATION_KINDS)} "
                                  "(--activations / ENGINE_ACTIVATIONS).")
    cpu.activations = kind
    return kind


def describe() -> str:
    """One line saying which compute path runs."""
    from kernels import cpu
    if name == "cupy":
        from kernels.cuda import graph
        return f"kernels: CUDA (CuPy), {graph.describe()}"
    if cpu.available:
        import numba
        acts = "int8 activations (opt-in)" if cpu.activations == "int8" else "float32 activations"
        return (f"kernels: numba fused quantized mat-vec, {acts}, {numba.get_num_threads()} threads (compiled on "
                "first use, about a minute, then cached)")
    return "kernels: NumPy reference (slow; install numba for the fast path)"
