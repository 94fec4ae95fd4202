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


def set_threads(n: int | None) -> int:
    """Limit BLAS and compiled kernels to n worker threads (None: all cores). Returns the count in force."""
    import os
    from threadpoolctl import threadpool_limits
    n = n or os.cpu_count() or 1
    threadpool_limits(n)
    return n
