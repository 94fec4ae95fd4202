"""The stand-in GPU for the kernels/cuda launcher tests: a `cupy` made of NumPy whose arrays the engine takes for
device arrays, with `kernels.cuda.kernel` running each .cu kernel in tests/cudasim (same grid, block, shared memory and
arguments as the real launch). Its `cupy.cuda.Stream` captures as a CUDA graph does: while a stream captures, kernel
launches on it are recorded (arguments by reference), not run, and `Graph.launch` runs the recording again; anything
else on the device then (a host copy, a CuPy elementwise operation or copy, a sync such as `.get()`, an allocation
other than `empty`/`empty_like` from a private pool set with `cupy.cuda.using_allocator`) raises CaptureViolation.
Every launch is also logged in `LAUNCHES` (kernel names, in order), captured or not.

Use: the `device` fixture (registered for tests/kernels by its conftest.py) and `on_device` to put a NumPy array on it.
"""
import sys
import types

import numpy as np
import pytest

import cudasim
from kernels import cuda

LAUNCHES: list[str] = []  # every kernel launched (or recorded) since the device fixture started


class CaptureViolation(AssertionError):
    """Work in a captured region that a CUDA graph cannot hold: an allocation, a host copy or a sync."""


def _forbid(what: str) -> None:
    if Stream.capturing is not None:
        raise CaptureViolation(f"{what} while a stream captures a graph")


class MemoryPool:
    """cupy.cuda.MemoryPool: a captured region may allocate from one set with using_allocator (a pool of its own,
    so the addresses its graph holds stay valid); the stand-in's arrays never move, so it only marks that."""

    def malloc(self, nbytes):
        raise NotImplementedError("the stand-in allocates through cupy.empty")


_allocators: list = []  # the allocators set with using_allocator, innermost last
_allocating: list = []  # whether each cupy call in progress is an empty/empty_like (innermost last)


class _UsingAllocator:
    def __init__(self, allocator=None):
        self.allocator = allocator

    def __enter__(self):
        _allocators.append(self.allocator)

    def __exit__(self, *exc):
        _allocators.pop()


def _allocate(what: str) -> None:
    """An allocation: allowed while capturing only from a private pool's malloc."""
    private = _allocators and getattr(_allocators[-1], "__self__", None).__class__ is MemoryPool
    if not private:
        _forbid(f"{what} outside a private memory pool")


class DeviceArray(np.ndarray):
    """A NumPy array the engine takes for a CuPy one."""

    def get(self):
        _forbid("a device-to-host copy (.get)")
        return np.asarray(self).copy()

    def set(self, host):
        _forbid("a host-to-device copy (.set)")
        np.asarray(self)[...] = host

    def item(self, *args):
        _forbid("a sync (.item)")
        return super().item(*args)

    def __int__(self):
        _forbid("a sync (int)")
        return int(np.asarray(self))

    def __float__(self):
        _forbid("a sync (float)")
        return float(np.asarray(self))

    def __bool__(self):
        _forbid("a sync (bool)")
        return bool(np.asarray(self))

    def __getitem__(self, index):
        out = super().__getitem__(index)
        if not isinstance(out, np.ndarray):
            _forbid("a sync (reading an element)")
        return out

    def __setitem__(self, index, value):
        _forbid("a CuPy copy kernel (item assignment)")
        super().__setitem__(index, value)

    def __array_finalize__(self, obj):
        if self.base is None and not (_allocating and _allocating[-1]):
            _forbid("an allocation (copy)")

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        _forbid(f"a CuPy elementwise kernel ({context[0].__name__ if context else 'reduction'})")
        return super().__array_wrap__(arr, context, return_scalar)


DeviceArray.__module__ = "cupy.standin"


class Graph:
    """A captured sequence of kernel launches; launch() runs it again. names: the kernels, in order."""

    def __init__(self, launches):
        self.launches = launches
        self.names = [name for name, _ in launches]
        self.replays = 0

    def launch(self, stream=None):
        assert Stream.capturing is None
        for _, run in self.launches:
            run()
        self.replays += 1


class Event:
    def __init__(self, disable_timing=False):
        pass


class Stream:
    """cupy.cuda.Stream: the stand-in runs everything at once, so streams only matter while one captures."""
    current = []  # streams entered with `with`, innermost last
    capturing = None  # the stream capturing now

    def __init__(self, null=False, non_blocking=False):
        self.launches = None

    def __enter__(self):
        Stream.current.append(self)
        return self

    def __exit__(self, *exc):
        Stream.current.pop()

    def begin_capture(self, mode=None):
        assert Stream.capturing is None
        Stream.capturing, self.launches = self, []

    def end_capture(self):
        assert Stream.capturing is self
        Stream.capturing = None
        return Graph(self.launches)

    def record(self, event=None):
        return event or Event()

    def wait_event(self, event):
        pass


Stream.null = Stream(null=True)


def _device_module() -> types.ModuleType:
    mod = types.ModuleType("cupy")

    def wrap(f):
        def call(*args, **kwargs):
            allocation = f.__name__ in ("empty", "empty_like")
            if allocation:
                _allocate(f"an allocation (cupy.{f.__name__})")
            _allocating.append(allocation)
            try:
                out = f(*args, **kwargs)
            finally:
                _allocating.pop()
            if not allocation and isinstance(out, np.ndarray) and not any(
                    isinstance(a, DeviceArray) and np.shares_memory(a, out) for a in args):
                _forbid(f"an allocation with a copy or fill, or a host copy (cupy.{f.__name__})")
            return out.view(DeviceArray) if isinstance(out, np.ndarray) else out
        return call

    def attr(name):
        f = getattr(np, name)
        return f if isinstance(f, type) or not callable(f) else wrap(f)
    mod.__getattr__ = attr
    mod.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, Graph=Graph, MemoryPool=MemoryPool,
                                     using_allocator=_UsingAllocator,
                                     get_current_stream=lambda: Stream.current[-1] if Stream.current else Stream.null,
                                     runtime=types.SimpleNamespace(memGetInfo=lambda: (16 << 30, 16 << 30)))
    mod.get_default_memory_pool = lambda: types.SimpleNamespace(free_bytes=lambda: 0)  # a 16 GiB device, all free
    return mod


def _launcher(source, name):
    module = cudasim.load(cuda.DIR / source)

    def launch(grid, block, args, shared_mem=0):
        args = [None if a is cuda.NULL else a for a in args]

        def run():
            module.launch(name, grid, block, args, shared=shared_mem, order="random", seed=1)
        LAUNCHES.append(name)
        if Stream.capturing is None:
            run()
        else:
            assert Stream.current and Stream.current[-1] is Stream.capturing, "a launch off the capturing stream"
            Stream.capturing.launches.append((name, run))
    return launch


@pytest.fixture
def device(monkeypatch):
    """The stand-in GPU: `cupy` is the stand-in module, kernels run in cudasim. Yields a kernels.device.Device
    of kind "cuda" (its xp is the stand-in)."""
    from kernels.device import Device
    monkeypatch.setitem(sys.modules, "cupy", _device_module())
    monkeypatch.setattr(cuda, "kernel", _launcher)
    LAUNCHES.clear()
    yield Device("cuda")
    Stream.capturing = None
    Stream.current.clear()
    _allocators.clear()


def on_device(a):
    return np.ascontiguousarray(a).view(DeviceArray)
