"""The service behind the routes: every request runs on a worker thread (at most max_batch at once, up to max_queue
more wait; beyond that: 429 with Retry-After) whose generation loop runs on an engine.runtime.scheduler.BatchingRunner
(Service serves llm.with_runner(it)), so all running requests share one batched forward per token. Chat completions
reuse the KV cache of an earlier request whose prompt shares the longest prefix (a follow-up costs only its new
tokens); UI sessions are engine.chat Chats in the same SessionStore (the KV byte budget, LRU eviction), saved in
its SessionsDB (sessions_db: a path, ":memory:" or an open engine.chat.sessions_db.SessionsDB)."""
import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from starlette.requests import HTTPConnection

from engine.chat import SessionStore
from engine.chat.conversation import render_chat
from engine.chat.sessions_db import MEMORY, SessionInfo, SessionsDB
from engine.errors import InvalidRequestError
from engine.runtime.generate import common_prefix
from engine.runtime.scheduler import BatchingRunner
from engine.server.errors import ApiError
from engine.server.metrics import Metrics


class Run:
    """The items of a request that Service.run queued, as an async iterator (its worker's error is raised).
    aclose() stops it: a queued request leaves the queue at once; a running one stops before its next token, and
    aclose waits for that (so its session is consistent afterwards). Use it with contextlib.aclosing."""

    def __init__(self, cancel: threading.Event):
        self.cancel, self.items, self.future, self.ended = cancel, asyncio.Queue(), None, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self.ended:
            kind, value = await self.items.get()
            self.ended = kind == "end"
            if kind == "error":
                raise value
            if kind == "item":
                return value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.cancel.set()
        self.future.cancel()  # only succeeds while it waits for a worker
        while not self.ended:
            self.ended = (await self.items.get())[0] == "end"


def _putter(loop: asyncio.AbstractEventLoop, items: asyncio.Queue) -> Callable[[tuple], None]:
    """put(item) from a worker thread onto items, on loop; a no-op once the loop is gone."""
    def put(item: tuple) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop is gone
            pass
    return put


def served_ids(source, started_as: str | None = None) -> list[str]:
    """The model ids a server answers to: the resolved id (source.id, first: responses name it), the id it was
    started with (e.g. --model's text) and the registry's aliases of its entry (the arch id, "smollm2", when it is
    the arch's default variant)."""
    spec = source.spec
    ids = [source.id, *([started_as.strip()] if started_as and started_as.strip() else []),
           *([spec.arch] if spec is not None and spec.default else [])]
    return list(dict.fromkeys(ids))


class Service:
    """Runs requests on worker threads against the batching runner (scheduler); counts what runs (active) and
    waits (queued). model_id: the id the server was started with (served_ids). max_tokens_default: the most tokens
    an API request without max_tokens generates (None: the rest of the context)."""

    def __init__(self, llm, max_batch: int = 8, max_queue: int = 32, kv_budget: int = 1 << 30,
                 model_id: str | None = None, max_tokens_default: int | None = None,
                 sessions_db: str | SessionsDB = MEMORY):
        if max_batch < 1 or max_queue < 0 or (max_tokens_default is not None and max_tokens_default < 1):
            raise InvalidRequestError("max_batch and max_tokens_default must be >= 1 and max_queue >= 0")
        self.llm, self.max_batch, self.max_queue = llm, max_batch, max_queue
        self.model_ids = served_ids(llm.source, model_id)
        self.model_id, self.max_tokens_default = self.model_ids[0], max_tokens_default
        self.scheduler = BatchingRunner(llm.model)
        self.served = llm.with_runner(self.scheduler)
        db = sessions_db if isinstance(sessions_db, SessionsDB) else SessionsDB(sessions_db)
        self.store = SessionStore(self.served, max_bytes=kv_budget, db=db)
        self.sessions: dict[str, SessionInfo] = self.store.infos  # the UI sessions, those of the db at start first
        self.active = self.queued = 0
        self.requests = self.rejected = 0
        self._pool = ThreadPoolExecutor(max_batch, thread_name_prefix="engine-request")
        self._lock = threading.Lock()
        self._api_idle: list[str] = []  # API cache slots (sessions "api:N") not in use
        self._api_ids = itertools.count()
        self.metrics = Metrics(self)

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "active": self.active, "queued": self.queued,
                "batch": self.scheduler.batch_size, "max_batch": self.max_batch, "max_queue": self.max_queue,
                "requests": self.requests, "rejected": self.rejected, "steps": self.scheduler.steps,
                "kv_bytes": self.store.used_bytes, "kv_budget": self.store.max_bytes}

    def close(self) -> None:
        self.scheduler.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.db.close()

    def admit(self) -> None:
        """Count a new request in, or raise 429 when max_batch run and max_queue wait."""
        with self._lock:
            if self.active + self.queued >= self.max_batch + self.max_queue:
                self.rejected += 1
                raise ApiError(429, f"the server is busy ({self.active} running, {self.queued} waiting); retry "
                               "shortly", type_="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
            self.queued += 1
            self.requests += 1

    def run(self, make: Callable[[], Iterator], cancel: threading.Event) -> Run:
        """Admit a request (429 when full) and queue make()'s iteration on a worker thread; returns its items as
        a Run. Setting cancel, or closing the Run, stops it before its next token and frees its place in the
        batch; closing it while it waits gives its queue place back at once."""
        self.admit()
        run, start = Run(cancel), time.perf_counter()
        put = _putter(asyncio.get_running_loop(), run.items)

        def unqueued(future) -> None:  # cancelled before a worker took it (Run.aclose, or shutdown)
            if future.cancelled():
                with self._lock:
                    self.queued -= 1
                put(("end", None))

        try:
            run.future = self._pool.submit(self._work, make, cancel, put, start)
        except RuntimeError:
            with self._lock:
                self.queued -= 1
            raise ApiError(503, "the server is shutting down", type_="server_error") from None
        run.future.add_done_callback(unqueued)
        return run

    def _work(self, make: Callable[[], Iterator], cancel: threading.Event, put: Callable[[tuple], None],
              start: float) -> None:
        """A worker thread's part of run: make()'s items (or its error) through put, then ("end", None); each
        item timed (time to first token since start, then between items)."""
        with self._lock:
            self.queued -= 1
            self.active += 1
        try:
            if cancel.is_set():
                return
            it, clock = make(), self.metrics.clock(start)
            try:
                for item in it:
                    put(("item", item))
                    clock.tick()
                    if cancel.is_set():
                        break
            finally:
                if hasattr(it, "close"):
                    it.close()
        except BaseException as e:  # noqa: BLE001 — handed to the request
            put(("error", e))
        finally:
            self.scheduler.leave()
            with self._lock:
                self.active -= 1
            put(("end", None))

    # -- chat completions on pooled caches --

    def max_tokens(self, asked: int | None, n_prompt: int) -> int:
        """The max_tokens of an API request whose prompt has n_prompt tokens: the one asked for, else the rest of
        the context, at most max_tokens_default."""
        rest = max(1, self.llm.n_ctx - n_prompt)
        return asked or min(rest, self.max_tokens_default or rest)

    def api_chat(self, messages: list[dict], enable_thinking, tools: list[dict] | None = None):
        """(session id, Chat, prompt tokens) of the idle API cache slot whose tokens share the longest prefix with
        messages' prompt (a new slot when none shares any and fewer than 2 × max_batch exist), its tools set (those
        the prompt shows: None for a tool_choice "none"). Give it back with release_api_chat."""
        ids = self.llm.encode_chat(render_chat(self.llm, messages, True, enable_thinking, tools))
        with self._lock:
            scored = [(common_prefix(self.store.get(sid).cached_ids, ids), sid) for sid in self._api_idle]
            best = max(scored, default=(0, None))
            sid = best[1]
            if sid is None or (best[0] == 0 and len(self._api_idle) < 2 * self.max_batch):
                sid = f"api:{next(self._api_ids)}"
            else:
                self._api_idle.remove(sid)
        chat = self.store.get(sid, context_overflow="error")
        chat.enable_thinking = enable_thinking
        chat.messages = messages
        chat.tools = tools
        return sid, chat, len(ids)

    def release_api_chat(self, sid: str) -> None:
        with self._lock:
            self._api_idle.append(sid)

    # -- UI sessions --

    def session(self, sid: str) -> SessionInfo:
        info = self.sessions.get(sid)
        if info is None:
            raise ApiError(404, f"no session {sid!r}; list them with GET /api/sessions", code="session_not_found")
        return info

    def session_view(self, info: SessionInfo, messages: bool = True) -> dict:
        chat = self.store.get(info.id)
        view = asdict(info) | {"system": chat.system, "enable_thinking": chat.enable_thinking,
                               "n_messages": len(chat.messages)}
        if messages:
            view["messages"] = [m for m in chat.messages if m["role"] != "system"]
        return view


def service_of(conn: HTTPConnection) -> Service:
    """The Service of the app that a request or WebSocket came to (create_app puts it in app.state)."""
    return conn.app.state.service
