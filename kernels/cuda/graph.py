"""A step of GPU work captured once as a CUDA graph and replayed: `CapturedStep`.

A small model's decode step is some sixteen kernel launches a layer, each too short to hide CuPy's launch cost; a
graph launches them all at once. A graph replays fixed arguments, so what changes between replays must be read
from device memory the caller writes before each replay (e.g. the token id and its position), and the arrays the
captured work allocates must keep their addresses: they come from a memory pool of the step's own, used by
nothing else (as torch.cuda.graph does). The work runs once uncaptured on the step's stream first (compiling its
kernels and filling the pool, so the capture allocates nothing new), then is recorded on that stream.
It must be nothing but kernel launches: no host copy, no sync, no CuPy elementwise operation on a stream other
than the current one.
"""
from contextlib import contextmanager


class CapturedStep:
    """Work of `fn()` (kernel launches returning device arrays), run, captured and replayed on a side stream.

        step = CapturedStep(fn)
        out = step.run()        # fn() uncaptured (the first time: before capturing)
        step.capture()          # record fn(); step.output: what the recorded fn() returned
        out = step.replay()     # the recorded launches again; returns step.output, rewritten
    """

    def __init__(self, fn):
        import cupy
        self.fn = fn
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.ready, self.done = cupy.cuda.Event(disable_timing=True), cupy.cuda.Event(disable_timing=True)
        self.graph = self.output = None

    @contextmanager
    def _on_side_stream(self):
        """Work inside runs on self.stream after what the current stream queued before, allocating from self.pool;
        the current stream's later work waits for it."""
        import cupy
        current = cupy.cuda.get_current_stream()
        self.stream.wait_event(current.record(self.ready))
        with self.stream, cupy.cuda.using_allocator(self.pool.malloc):
            yield
        current.wait_event(self.stream.record(self.done))

    def run(self):
        """fn() uncaptured on the side stream, from the private pool."""
        with self._on_side_stream():
            return self.fn()

    def capture(self) -> None:
        """Record fn() as self.graph (its result as self.output). Raises what a failed capture raises (no stream
        capture in this CuPy or driver, or an operation a graph cannot hold); the step then keeps no graph."""
        with self._on_side_stream():
            self.stream.begin_capture()
            try:
                output = self.fn()
            finally:
                graph = self.stream.end_capture()
        self.graph, self.output = graph, output

    def replay(self):
        """Launch the recorded graph; returns self.output, which it rewrote."""
        with self._on_side_stream():
            self.graph.launch(self.stream)
        return self.output


def capture_supported() -> str:
    """Empty when this CuPy can capture streams, else why not (a few words)."""
    import cupy
    return "" if hasattr(cupy.cuda.Stream, "begin_capture") else "this CuPy has no stream capture"
