"""The stand-in GPU for the kernels/cuda launcher tests: a `cupy` made of NumPy whose arrays the engine takes for
device arrays, with `kernels.cuda.kernel` running each .cu kernel in tests/cudasim (same grid, block, shared memory and
arguments as the real launch). Its `cupy.cuda.Stream` captures as a CUDA graph does: while a stream captures, kernel
launches on it are recorded (arguments by reference), not run, and `Graph.launch` runs the recording again; anything
else on the device then (an allocation, a host copy, a CuPy elementwise operation, a sync such as `.get()`) raises
CaptureViolation.

Use: the `device` fixture (registered for tests/kernels by its conftest.py) and `on_device` to put a NumPy array on it.
"""
import sys
import types

import numpy as np
import pytest

import cudasim
from kernels import backend, cuda


class CaptureViolation(AssertionError):
    """Work in a captured region that a CUDA graph cannot hold: an allocation, a host copy or a sync."""


def _forbid(what: str) -> None:
    if Stream.capturing is not None:
        raise CaptureViolation(f"{what} while a stream captures a graph")


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
        if self.base is None:
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
            out = f(*args, **kwargs)
            if isinstance(out, np.ndarray) and not any(isinstance(a, DeviceArray) and np.shares_memory(a, out)
                                                       for a in args):
                _forbid(f"an allocation or host copy (cupy.{f.__name__})")
            return out.view(DeviceArray) if isinstance(out, np.ndarray) else out
        return call

    def attr(name):
        f = getattr(np, name)
        return f if isinstance(f, type) or not callable(f) else wrap(f)
    mod.__getattr__ = attr
    mod.cuda = types.SimpleNamespace(Stream=Stream, Event=Event, Graph=Graph,
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
        if Stream.capturing is None:
            run()
        else:
            assert Stream.current and Stream.current[-1] is Stream.capturing, "a launch off the capturing stream"
            Stream.capturing.launches.append((name, run))
    return launch


@pytest.fixture
def device(monkeypatch):
    """The stand-in GPU: backend on "cupy", compiled CPU kernels off, kernels run in cudasim."""
    from kernels import cpu
    from kernels.cuda import graph as cuda_graph
    monkeypatch.setitem(sys.modules, "cupy", _device_module())
    monkeypatch.setattr(cuda, "kernel", _launcher)
    monkeypatch.setattr(cpu, "available", False)
    monkeypatch.setattr(cuda_graph, "_notice", "", raising=False)  # (graph.py is being rewritten)
    backend.use("cupy")
    yield sys.modules["cupy"]
    backend.use("numpy")
    Stream.capturing = None
    Stream.current.clear()


def on_device(a):
    return np.ascontiguousarray(a).view(DeviceArray)
