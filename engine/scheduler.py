"""Continuous batching: one thread owns the model and runs every sequence's next forward in one packed forward.

    scheduler = Scheduler(llm.model)
    served = scheduler.serving(llm)          # an LLM whose model is the scheduler: llm.stream / Chat work unchanged
    # on each request thread: run served.stream(...) or a Chat turn as usual, then scheduler.leave()

Request threads call `scheduler.forward(tokens, positions, cache, last_only)` exactly as they would call
`model.forward` (the generate loop and Chat do), and block until it has run; or `submit(...)`, which queues the
forward and returns a job whose result() waits (the generate loop queues a token's forward before streaming the
token, so that work overlaps the step). The scheduler thread waits for a
token boundary — every sequence in the batch has queued its next forward, or `gather_s` passed — then packs all
queued work into one `model.forward_packed`: each decoding sequence is one row; a new prompt joins in chunks of
at most `prefill_chunk` rows per step, so a long prompt never stalls the others for long. Each sequence keeps its
own KVCache. A thread's sequence joins the batch with its first forward and leaves it with `leave()`.
"""
import copy
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ContextOverflowError


@dataclass(eq=False)
class _Job:
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


class Scheduler:
    """Runs model.forward_packed on its own thread for all request threads. model: models.Llama (or any model
    with forward_packed). prefill_chunk: most prompt rows per step. gather_s: longest wait for stragglers at a
    token boundary. Counters: steps (packed forwards run), rows (tokens run), max_rows_per_step."""

    serializes_forwards = True  # engine.chat calls it without the process-wide compute lock

    def __init__(self, model, prefill_chunk: int = 256, gather_s: float = 0.02):
        from engine.chat import _COMPUTE_LOCK, _kernel_threads_setter
        self.model, self.prefill_chunk, self.gather_s = model, prefill_chunk, gather_s
        self.steps = self.rows = self.max_rows_per_step = 0
        self._compute_lock = _COMPUTE_LOCK  # the kernels' scratch buffers are process-wide
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._joined: set[int] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, args=(_kernel_threads_setter(),), daemon=True,
                                        name="engine-scheduler")
        self._thread.start()

    def serving(self, llm):
        """A shallow copy of llm whose model is this scheduler (tokenizer, template, caches shared)."""
        served = copy.copy(llm)
        served.model = self
        return served

    @property
    def config(self):
        return self.model.config

    @property
    def batch_size(self) -> int:
        """Sequences in the batch now (threads that ran a forward and have not left)."""
        with self._cond:
            return len(self._joined)

    def forward(self, tokens, positions, cache, last_only: bool = False):
        """model.forward, run by the scheduler thread together with the other sequences' work; blocks.
        tokens, positions: [T] int; cache: the sequence's KVCache. Returns logits as model.forward does."""
        return self.submit(tokens, positions, cache, last_only).result()

    def submit(self, tokens, positions, cache, last_only: bool = False) -> _Job:
        """forward, queued for the next step without waiting: the returned job's result() blocks until it has run
        (engine.generate queues a token's forward before handing the token to its caller)."""
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

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- the scheduler thread --

    def _loop(self, set_threads) -> None:
        set_threads()
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

    def _run(self, batch: list[tuple[_Job, int]]) -> None:
        if not batch:
            return
        tokens = np.concatenate([j.tokens[j.fed:j.fed + n] for j, n in batch])
        positions = np.concatenate([j.positions[j.fed:j.fed + n] for j, n in batch])
        all_rows = any(not j.last_only for j, _ in batch)
        try:
            with self._compute_lock:
                logits = self.model.forward_packed(tokens, positions, [j.cache for j, _ in batch],
                                                   [n for _, n in batch], last_only=not all_rows)
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
