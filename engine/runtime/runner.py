"""How forwards run: the `Runner` interface that the generate loop, Chat and the server call, and `DirectRunner`,
which runs each forward on the calling thread. The batching runner is engine.runtime.scheduler.BatchingRunner.

    runner = DirectRunner(llm.model)             # llm.runner is one already
    logits = runner.forward(tokens, positions, cache, last_only=True)
    handle = runner.submit(tokens, positions, cache, last_only=True)   # handle.result() → logits; handle.settle()

tokens, positions: [T] int64 arrays (a sequence's next tokens and their cache positions); cache: that sequence's
engine.runtime.kvcache.KVCache, which the forward extends by T positions. Logits are [T, vocab] float32 ([1, vocab] with
last_only) as a NumPy array, wherever the model computes. A runner gives its compute threads the model's
kernels.device.Device set-up (Device.enter) before each forward, so models on differently configured devices
share a process.
"""
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from engine.runtime.cores import CoreShare
from engine.runtime.graphs import DecodeGraphs


class Handle(ABC):
    """A forward asked for with Runner.submit."""

    @abstractmethod
    def result(self):
        """The forward's logits, once it has run (its error is raised instead)."""

    @abstractmethod
    def settle(self) -> None:
        """Wait until a forward already under way has run, without its result (nothing when none is)."""


class Runner(ABC):
    """Runs a model's forwards over KV caches. Subclasses call Runner.__init__ (it makes the worker thread of
    run_async)."""

    def __init__(self):
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="engine-runner")

    @abstractmethod
    def forward(self, tokens, positions, cache, last_only: bool = False):
        """Run the model over tokens at positions, writing cache; blocks; returns the logits."""

    @abstractmethod
    def submit(self, tokens, positions, cache, last_only: bool = False) -> Handle:
        """forward as a Handle. A runner that computes elsewhere queues it and returns at once, so the caller's own
        work (detokenizing, streaming a token) overlaps it; one that cannot may run it when result() is called."""

    def run_async(self, fn: Callable) -> Future:
        """fn() on this runner's worker thread, as a concurrent.futures.Future: Chat.send_async runs each step of a
        turn there, off the event loop. One thread per runner: libgomp keeps a thread pool for every thread that
        launches kernels, so steps must not wander over threads."""
        return self._worker.submit(fn)

    def leave(self) -> None:
        """The calling thread's sequence is finished (a batching runner stops waiting for it; others: nothing)."""

    @abstractmethod
    def describe(self) -> str:
        """One line saying how forwards run (the command lines print it after loading)."""

    def close(self) -> None:
        """Stop the worker thread (a step in flight finishes)."""
        self._worker.shutdown(wait=False)


class Deferred(Handle):
    """A forward run on the caller's thread when result() is asked for (settle runs nothing)."""

    def __init__(self, run: Callable):
        self._run = run

    def result(self):
        return self._run()

    def settle(self) -> None:
        """Nothing ran, nothing to wait for."""


class DirectRunner(Runner):
    """Runs model.forward (models.Llama) on the calling thread, one forward at a time in the whole process.
    On a GPU it replays a one-token forward as the cache's captured CUDA graph when it can (engine.runtime.graphs).

    compute_lock is per process, not per runner: the kernels' thread pools are process-wide, so two forwards must
    never overlap, whichever runner or LLM they come from (several Chats or SessionStore sessions on their
    threads, two loaded models, a BatchingRunner's thread, which takes this lock too). Concurrent turns therefore
    interleave token by token. submit defers the forward to result(): nothing runs while the caller holds its
    token."""

    compute_lock = threading.Lock()
    cores = CoreShare()  # the CPU forwards' thread count under contention; used under compute_lock only

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.device = model.device
        self.graphs = DecodeGraphs(model) if self.device.kind == "cuda" else None

    def forward(self, tokens, positions, cache, last_only: bool = False):
        with self.compute_lock:
            if self.device.compiled:
                return self.cores.run(self.device, lambda: self.model.forward(tokens, positions, cache, last_only))
            self.device.enter()
            logits = None
            if self.graphs is not None and len(tokens) == 1:
                logits = self.graphs.step(cache, int(tokens[0]), int(positions[0]))
            if logits is None:
                logits = self.model.forward(tokens, positions, cache, last_only=last_only)
            return self.device.to_host(logits)

    def submit(self, tokens, positions, cache, last_only: bool = False) -> Deferred:
        return Deferred(lambda: self.forward(tokens, positions, cache, last_only))

    def describe(self) -> str:
        line = self.device.describe()
        return f"{line}, {self.graphs.describe()}" if self.graphs is not None else line
