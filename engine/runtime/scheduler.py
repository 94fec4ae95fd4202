"""Continuous batching: `BatchingRunner`, an engine.runtime.runner.Runner whose one thread runs every sequence's next
forward in one packed forward.

    runner = BatchingRunner(llm.model)
    served = llm.with_runner(runner)         # served.stream / Chat(served) on any thread share the batch
    # on each request thread: run served.stream(...) or a Chat turn as usual, then runner.leave()

Request threads call `runner.forward(tokens, positions, cache, last_only)` and block until it has run; or
`submit(...)`, which queues the forward and returns a job whose result() waits (the generate loop queues a
token's forward before streaming the token, so that work overlaps the step). The scheduler thread waits for a
token boundary — every sequence in the batch has queued its next forward, or `gather_s` passed — then packs all
queued work into one `model.forward_packed`: each decoding sequence is one row; a new prompt joins in chunks of
at most `prefill_chunk` rows per step, so a long prompt never stalls the others for long. Each sequence keeps its
own KVCache. A thread's sequence joins the batch with its first forward and leaves it with `leave()`.
"""
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ContextOverflowError
from engine.runtime.runner import DirectRunner, Handle, Runner


@dataclass(eq=False)
class _Job(Handle):
    """One forward asked for by a request thread; done is set when result (or error) is ready."""
    tokens: np.ndarray
    positions: np.ndarray
    cache: object
    last_only: bool
    owner: int
    fed: int = 0  # rows already run (a prompt runs in chunks)
    outputs: list = field(default_factory=list)
    logits: object = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def result(self):
        """The forward's logits, once it has run (blocks until then); its error is raised instead."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.logits

    def settle(self) -> None:
        """Wait until the forward has run (or failed), without its result."""
        self.done.wait()


class BatchingRunner(Runner):
    """Runs model.forward_packed on its own thread for all request threads, under DirectRunner.compute_lock (the
    kernels' scratch buffers are process-wide). model: models.Llama (or any model with forward_packed).
    prefill_chunk: most prompt rows per step. gather_s: longest wait for stragglers at a token boundary.
    Counters: steps (packed forwards run), rows (tokens run), max_rows_per_step, step_sizes (steps by the number of
    sequences in them, a collections.Counter)."""

    def __init__(self, model, prefill_chunk: int = 256, gather_s: float = 0.02):
        super().__init__()
        self.model, self.prefill_chunk, self.gather_s = model, prefill_chunk, gather_s
        self.steps = self.rows = self.max_rows_per_step = 0
        self.step_sizes: Counter[int] = Counter()
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._joined: set[int] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="engine-scheduler")
        self._thread.start()

    @property
    def batch_size(self) -> int:
        """Sequences in the batch now (threads that ran a forward and have not left)."""
        with self._cond:
            return len(self._joined)

    def forward(self, tokens, positions, cache, last_only: bool = False):
        """Runner.forward, run by the scheduler thread together with the other sequences' work; blocks."""
        return self.submit(tokens, positions, cache, last_only).result()

    def submit(self, tokens, positions, cache, last_only: bool = False) -> _Job:
        """forward, queued for the next step without waiting: the returned job's result() blocks until it has run
        (the generate loop queues a token's forward before handing the token to its caller). The calling thread's
        sequence joins the batch (until leave())."""
        job = _Job(np.asarray(tokens), np.asarray(positions), cache, last_only, threading.get_ident())
        if not len(job.tokens):
            raise ValueError("forward needs at least one token")
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._joined.add(job.owner)
            self._pending.append(job)
            if len(self._pending) == 1 or self._at_boundary():  # the only moments the scheduler thread acts on
                self._cond.notify_all()
        time.sleep(0)  # hand the GIL on: the other request threads queue their forwards (and the step starts)
        return job      # before this thread goes on with its own work on the last token

    def leave(self) -> None:
        """The calling thread's sequence is finished: the batch stops waiting for it."""
        with self._cond:
            self._joined.discard(threading.get_ident())
            self._cond.notify_all()

    def describe(self) -> str:
        return f"{self.model.device.describe()}, continuous batching"

    def close(self) -> None:
        """Stop: queued forwards fail with RuntimeError; one running finishes first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        super().close()

    # -- the scheduler thread --

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for job in self._pending:
                        job.error = RuntimeError("the scheduler is closed")
                        job.done.set()
                    return
                deadline = time.monotonic() + self.gather_s
                while not self._at_boundary():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._take()
            self._run(batch)

    def _at_boundary(self) -> bool:
        """Every sequence in the batch has queued its next forward (a token boundary); called locked."""
        return len({j.owner for j in self._pending}) >= len(self._joined)

    def _take(self) -> list[tuple[_Job, int]]:
        """(job, rows this step) for every decode and prompt chunks up to prefill_chunk rows; called locked."""
        batch, budget = [], self.prefill_chunk
        for job in list(self._pending):
            left = len(job.tokens) - job.fed
            if job.cache.length + left > job.cache.max_len:
                self._pending.remove(job)
                job.error = ContextOverflowError(
                    f"{job.cache.length + left} positions do not fit in the {job.cache.max_len}-token context; "
                    "shorten the prompt or max_tokens.")
                job.done.set()
            elif left == 1:
                batch.append((job, 1))
            elif budget > 0:
                n = min(left, budget)
                budget -= n
                batch.append((job, n))
        return batch

    def _forward(self, tokens, positions, batch: list[tuple[_Job, int]], last_only: bool) -> np.ndarray:
        """The batch's packed forward, host logits; the caller holds the compute lock."""
        dev = self.model.device

        def forward():
            return dev.to_host(self.model.forward_packed(tokens, positions, [j.cache for j, _ in batch],
                                                         [n for _, n in batch], last_only=last_only))
        if dev.compiled:
            return DirectRunner.cores.run(dev, forward)
        dev.enter()
        return forward()

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        if not batch:
            return
        tokens = np.concatenate([j.tokens[j.fed:j.fed + n] for j, n in batch])
        positions = np.concatenate([j.positions[j.fed:j.fed + n] for j, n in batch])
        all_rows = any(not j.last_only for j, _ in batch)
        try:
            with DirectRunner.compute_lock:
                logits = self._forward(tokens, positions, batch, last_only=not all_rows)
        except BaseException as e:  # noqa: BLE001 — handed to every waiting thread
            with self._cond:
                for job, _ in batch:
                    self._pending.remove(job)
                    job.error = e
                    job.done.set()
            return
        self.steps += 1
        self.rows += len(tokens)
        self.max_rows_per_step = max(self.max_rows_per_step, len(tokens))
        self.step_sizes[len(batch)] += 1
        ends = np.cumsum([n for _, n in batch])
        with self._cond:
            for s, (job, n) in enumerate(batch):
                job.fed += n
                if not job.last_only:
                    job.outputs.append(logits[ends[s] - n:ends[s]])
                if job.fed < len(job.tokens):
                    continue
                self._pending.remove(job)
                if job.last_only:
                    job.logits = logits[ends[s] - 1:ends[s]] if all_rows else logits[s:s + 1]
                else:
                    job.logits = np.concatenate(job.outputs)
                job.done.set()
