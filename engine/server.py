"""The HTTP server: OpenAI-compatible API, conversations for the web UI, and the UI itself (engine/web/).

    app = create_app(llm, max_batch=8, max_queue=32, kv_budget=1 << 30)   # a FastAPI app; run it with uvicorn

Every request runs on a worker thread (at most max_batch at once, up to max_queue more wait; beyond that: 429
with Retry-After) whose generation loop runs on an engine.scheduler.BatchingRunner (Service serves
llm.with_runner(it)), so all running requests share one batched forward per token. Chat completions reuse the KV
cache of an earlier request whose prompt shares the longest prefix (a follow-up of a conversation costs only its
new tokens). UI sessions are engine.chat Chats in one SessionStore (the KV byte budget, LRU eviction) with the
API's caches.

Every request gets an answer: bad input (malformed or too deeply nested JSON, lone surrogates, wrong types,
non-finite or out-of-range numbers) is a 400 in OpenAI's error shape, an unexpected exception a 500 of that shape
naming the request's X-Request-Id (the connection stays open), a WebSocket junk frame an error frame. A client
that goes away frees its place in the batch before the next token, or its queue place at once.
"""

import asyncio
import itertools
import json
import logging
import threading
import time
import uuid
from contextlib import aclosing, asynccontextmanager, closing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import jsonfile
from engine.chat import SessionStore
from engine.errors import (ContextOverflowError, EngineError, InvalidRequestError, TemplateError,
                           TokenizerError)
from engine.generate import GenerationStats, common_prefix
from engine.sampler import SamplingParams
from engine.scheduler import BatchingRunner

WEB_DIR = Path(__file__).parent / "web"
MAX_BODY_BYTES = 1 << 20
ROLES = ("system", "user", "assistant", "developer", "tool")
CLIENT_ERRORS = (InvalidRequestError, ContextOverflowError, TemplateError, TokenizerError)  # the request's fault
log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def engine_error(e: EngineError) -> ApiError:
    """An engine error as the API answers it: 400 when the request caused it, else a 500 server_error."""
    if isinstance(e, ContextOverflowError):
        return ApiError(400, str(e), code="context_length_exceeded")
    if isinstance(e, CLIENT_ERRORS):
        return ApiError(400, str(e), param=getattr(e, "param", None), code=getattr(e, "code", None))
    return ApiError(500, str(e), type_="server_error")


def internal_error(rid: str) -> ApiError:
    """The 500 of an unexpected exception (logged with its traceback under request id rid)."""
    return ApiError(500, f"the server failed on this request (request id {rid}); it keeps serving. Retry, or "
                    "report the request id with the server log if it keeps failing.", type_="server_error")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing more is sent."""


class RequestIds:
    """ASGI middleware: every HTTP request gets an id (scope["state"]["request_id"], the X-Request-Id response
    header). An unexpected exception is logged with that id and answered as an OpenAI-shaped 500 naming it, and
    the connection stays open for the next request (uvicorn closes it when an exception escapes the app)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = message | {"headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", rid, scope.get("method"), scope.get("path"))
            if started:
                raise  # the response is under way: only closing the connection can tell the client
            from fastapi.responses import JSONResponse
            await JSONResponse(internal_error(rid).body(), status_code=500)(scope, receive, send_with_id)


# ---- request validation -------------------------------------------------------------------------------------------


def _encodes(value) -> bool:
    """Whether value (JSON data) encodes as UTF-8: false when a string or key holds a lone surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(raw: bytes | str, what: str = "the body") -> dict:
    """A JSON object from raw text (nesting bounded by engine.jsonfile); 400 for anything else, including strings
    that hold a lone surrogate (JSON's "\\ud800" escapes decode to them; they are not Unicode text)."""
    try:
        value = jsonfile.loads(raw or b"{}")
    except ValueError as e:
        raise ApiError(400, f"{what} is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object", code="invalid_json")
    if not _encodes(value):
        param = next((k for k, v in value.items() if _encodes(k) and not _encodes(v)), None)
        raise ApiError(400, f"{what} holds invalid Unicode{f' in {param!r}' if param else ''}: a lone surrogate "
                       "(such as \\ud800) that no UTF-8 text can carry; send whole characters (surrogate pairs)",
                       param=param, code="invalid_unicode")
    return value


def _sampling(body: dict, llm) -> SamplingParams:
    """The SamplingParams of an OpenAI request body over the model's defaults (max_tokens None: the rest of the
    context), after the body's other generation fields (n, stream) are checked."""
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise ApiError(400, f"only n=1 is supported, got {json.dumps(body['n'])[:40]}", param="n",
                       code="invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    return SamplingParams.from_openai(body, llm.sampling_defaults, llm.n_ctx)


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                       param="stream_options")
    return bool(opts.get("include_usage"))


def _text_of(content, i: int) -> str:
    """A message's content as text: a string, or a list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}]")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role among {ROLES}", param=f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _text_of(m.get("content") or "", i)})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "'messages' needs at least one user message", param="messages")
    return out


def _usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def _finish(stats: GenerationStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


# ---- the service: admission, worker threads, batching ------------------------------------------------------------


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


@dataclass
class SessionInfo:
    """A UI conversation: its Chat lives in the SessionStore under id."""
    id: str
    title: str
    created: float
    updated: float


class Service:
    """Runs requests on worker threads against the batching runner (scheduler); counts what runs (active) and
    waits (queued)."""

    def __init__(self, llm, max_batch: int = 8, max_queue: int = 32, kv_budget: int = 1 << 30,
                 model_id: str | None = None):
        if max_batch < 1 or max_queue < 0:
            raise InvalidRequestError("max_batch must be >= 1 and max_queue >= 0")
        self.llm, self.max_batch, self.max_queue = llm, max_batch, max_queue
        self.model_id = model_id or llm.source.id
        self.scheduler = BatchingRunner(llm.model)
        self.served = llm.with_runner(self.scheduler)
        self.store = SessionStore(self.served, max_bytes=kv_budget)
        self.sessions: dict[str, SessionInfo] = {}
        self.active = self.queued = 0
        self.requests = self.rejected = 0
        self._pool = ThreadPoolExecutor(max_batch, thread_name_prefix="engine-request")
        self._lock = threading.Lock()
        self._api_idle: list[str] = []  # API cache slots (sessions "api:N") not in use
        self._api_ids = itertools.count()

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "active": self.active, "queued": self.queued,
                "batch": self.scheduler.batch_size, "max_batch": self.max_batch, "max_queue": self.max_queue,
                "requests": self.requests, "rejected": self.rejected, "steps": self.scheduler.steps,
                "kv_bytes": self.store.used_bytes, "kv_budget": self.store.max_bytes}

    def close(self) -> None:
        self.scheduler.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def admit(self) -> None:
        """Count a new request in, or raise 429 when max_batch run and max_queue wait."""
        with self._lock:
            if self.active + self.queued >= self.max_batch + self.max_queue:
                self.rejected += 1
                raise ApiError(429, f"the server is busy ({self.active} running, {self.queued} waiting); retry "
                               "shortly", type_="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
            self.queued += 1
            self.requests += 1

    def run(self, make: Callable[[], Iterator], cancel: threading.Event) -> "Run":
        """Admit a request (429 when full) and queue make()'s iteration on a worker thread; returns its items as
        a Run. Setting cancel, or closing the Run, stops it before its next token and frees its place in the
        batch; closing it while it waits gives its queue place back at once."""
        self.admit()
        loop = asyncio.get_running_loop()
        run = Run(cancel)

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(run.items.put_nowait, item)
            except RuntimeError:  # the event loop is gone
                pass

        def work() -> None:
            with self._lock:
                self.queued -= 1
                self.active += 1
            try:
                if cancel.is_set():
                    return
                it = make()
                try:
                    for item in it:
                        put(("item", item))
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

        def unqueued(future) -> None:  # cancelled before a worker took it (Run.aclose, or shutdown)
            if future.cancelled():
                with self._lock:
                    self.queued -= 1
                put(("end", None))

        try:
            run.future = self._pool.submit(work)
        except RuntimeError:
            with self._lock:
                self.queued -= 1
            raise ApiError(503, "the server is shutting down", type_="server_error") from None
        run.future.add_done_callback(unqueued)
        return run

    # -- chat completions on pooled caches --

    def api_chat(self, messages: list[dict], enable_thinking):
        """(session id, Chat) of the idle API cache slot whose tokens share the longest prefix with messages'
        prompt (a new slot when none shares any and fewer than 2 × max_batch exist). Give it back with
        release_api_chat."""
        ids = self.llm.encode_chat(self.llm.apply_chat_template(
            messages, **({} if enable_thinking is None else {"enable_thinking": enable_thinking})))
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
        return sid, chat

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
        view = asdict(info) | {"system": chat.system, "n_messages": len(chat.messages)}
        if messages:
            view["messages"] = [m for m in chat.messages if m["role"] != "system"]
        return view


# ---- the app ------------------------------------------------------------------------------------------------------


async def _collect(items) -> list:
    return [x async for x in items]


async def _disconnected(request) -> None:
    """Returns once the client has closed the connection (call it after the request body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request, awaitable):
    """awaitable's result; raises ClientGone, after cancelling it (and waiting for that), if the client
    disconnects first."""
    work, gone = asyncio.ensure_future(awaitable), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        left = not work.done()
        if left:
            work.cancel()
            await asyncio.wait((work,))
    if left:
        raise ClientGone
    return work.result()


def _ws_message(frame: dict) -> dict:
    """A client's WebSocket frame as a JSON object; ApiError (sent back as an error frame) for anything else."""
    if frame.get("text") is None:
        raise ApiError(400, "binary frames are not accepted; send JSON text frames like {\"type\": \"send\", "
                       "\"content\": \"...\"}")
    return parse_json(frame["text"], "the frame")


def _failure(e: Exception, rid: str) -> ApiError:
    """What to tell the client about an exception once its answer has started (in the stream or socket)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, EngineError):
        return engine_error(e)
    log.error("request %s failed", rid, exc_info=e)
    return internal_error(rid)


def create_app(llm, max_batch: int = 8, max_queue: int = 32, kv_budget: int = 1 << 30, model_id: str | None = None):
    """The FastAPI app serving llm (an engine.LLM). See the module docstring and README.md."""
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    service = Service(llm, max_batch, max_queue, kv_budget, model_id)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="engine", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(RequestIds)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(EngineError)
    async def engine_failure(request, e: EngineError):
        return await api_error(request, engine_error(e))

    @app.exception_handler(ClientGone)
    async def client_gone(request, e):
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(e.status_code, str(e.detail), type_).body(), status_code=e.status_code)

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
        raw = b""
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
        except ClientDisconnect:
            raise ClientGone from None
        return parse_json(raw)

    def check_model(body: dict) -> None:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
        if model not in (None, "", service.model_id):
            raise ApiError(404, f"the model {model!r} does not exist here; this server serves {service.model_id!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")

    def sse(payload) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"

    async def answer(request: Request, body: dict, kind: str, make, stats: Callable[[], GenerationStats],
                     shape) -> object:
        """Run make() (pieces) and answer as OpenAI does: a JSON body, or SSE chunks ending with [DONE].
        stats() gives the generation's statistics once it has ended; shape(pieces, delta, finish) a choice.
        A client that disconnects before its answer is complete (or starts streaming) cancels it."""
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
                "model": service.model_id}
        include_usage = _include_usage(body)
        pieces = service.run(make, threading.Event())
        if not body.get("stream"):
            async with aclosing(pieces):
                parts = await while_connected(request, _collect(pieces))
            return JSONResponse(head | {"choices": [shape(parts, None, _finish(stats()))], "usage": _usage(stats())})
        head["object"] += ".chunk" if kind == "chat" else ""
        try:  # fail before the stream starts when the request itself is bad
            first = await while_connected(request, anext(pieces, None))
        except BaseException:
            await pieces.aclose()
            raise

        async def events():
            try:
                if kind == "chat":
                    yield sse(head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]})
                if first is not None:
                    yield sse(head | {"choices": [shape([first], True, None)]})
                    async for piece in pieces:
                        yield sse(head | {"choices": [shape([piece], True, None)]})
                yield sse(head | {"choices": [shape([], True, _finish(stats()))]})
                if include_usage:
                    yield sse(head | {"choices": [], "usage": _usage(stats())})
            except Exception as e:  # noqa: BLE001 — the stream has started: the error goes in it
                yield sse(_failure(e, request.state.request_id).body())
            finally:
                await pieces.aclose()
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                           "owned_by": "engine", "context_length": llm.n_ctx,
                                           "sampling_defaults": asdict(llm.sampling_defaults)}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        check_model(body)
        messages = _messages(body)
        params = _sampling(body, llm)
        kwargs = body.get("chat_template_kwargs") or {}
        thinking = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
        if not isinstance(kwargs, dict) or not (thinking is None or isinstance(thinking, bool)):
            raise ApiError(400, "'chat_template_kwargs' must be an object like {\"enable_thinking\": false}",
                           param="chat_template_kwargs", code="invalid_type")
        if llm.template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions with a raw prompt")
        usage = [GenerationStats()]  # the turn's Usage, once the worker thread has it

        def make():
            sid, chat = service.api_chat(messages, thinking)
            try:
                gen = chat.regenerate(**asdict(params))
                with closing(gen):
                    yield from gen
            finally:
                usage[0] = chat.last_usage or usage[0]
                service.release_api_chat(sid)

        def shape(pieces, delta, finish):
            content = "".join(p.text for p in pieces if p.kind == "content")
            reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
            if delta:
                d = ({"content": content} if content else {}) | ({"reasoning_content": reasoning} if reasoning else {})
                return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            msg = {"role": "assistant", "content": content}
            if reasoning:
                msg["reasoning_content"] = reasoning.strip("\n")
            return {"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}

        return await answer(request, body, "chat", make, lambda: usage[0], shape)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        check_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not (isinstance(prompt, str) and prompt) and not (
                isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                            for t in prompt)):
            raise ApiError(400, "'prompt' must be a non-empty string (or one list of token ids)", param="prompt")
        params = _sampling(body, llm)
        ids = llm.encode_prompt(prompt)
        max_tokens = params.max_tokens or max(1, llm.n_ctx - len(ids))
        if len(ids) + max_tokens > llm.n_ctx:
            raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed the "
                           f"{llm.n_ctx}-token context; shorten the prompt or lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        stats = GenerationStats()

        def make():
            cache = llm.new_cache(len(ids) + max_tokens)
            return service.served.stream(ids, cache, params, max_tokens, stats=stats)

        def shape(pieces, delta, finish):
            return {"index": 0, "text": "".join(pieces), "logprobs": None, "finish_reason": finish}

        return await answer(request, body, "text", make, lambda: stats, shape)

    # -- UI sessions --

    @app.get("/api/sessions")
    async def list_sessions():
        infos = sorted(service.sessions.values(), key=lambda s: -s.updated)
        return {"sessions": [service.session_view(s, messages=False) for s in infos]}

    @app.post("/api/sessions")
    async def create_session(request: Request):
        body = await read_json(request)
        title, system = body.get("title") or "New chat", body.get("system")
        if not isinstance(title, str) or (system is not None and not isinstance(system, str)):
            raise ApiError(400, "'title' and 'system' must be strings")
        if llm.template is None:
            raise ApiError(400, "this model has no chat template, so it cannot chat")
        now = time.time()
        info = SessionInfo(uuid.uuid4().hex[:12], title[:200], now, now)
        service.store.get(info.id, system=system or None)
        service.sessions[info.id] = info
        return service.session_view(info)

    @app.get("/api/sessions/{sid}")
    async def get_session(sid: str):
        return service.session_view(service.session(sid))

    @app.patch("/api/sessions/{sid}")
    async def update_session(sid: str, request: Request):
        info = service.session(sid)
        body = await read_json(request)
        if "title" in body:
            if not isinstance(body["title"], str) or not body["title"].strip():
                raise ApiError(400, "'title' must be a non-empty string", param="title")
            info.title = body["title"].strip()[:200]
        if "system" in body:
            if body["system"] is not None and not isinstance(body["system"], str):
                raise ApiError(400, "'system' must be a string or null", param="system")
            try:
                service.store.get(sid).system = body["system"] or None
            except EngineError as e:
                raise ApiError(409, str(e)) from None
        info.updated = time.time()
        return service.session_view(info)

    @app.delete("/api/sessions/{sid}")
    async def delete_session(sid: str):
        service.session(sid)
        service.store.get(sid).cancel()
        service.store.drop(sid)
        service.sessions.pop(sid, None)
        return {"id": sid, "deleted": True}

    @app.post("/api/sessions/{sid}/undo")
    async def undo(sid: str):
        info = service.session(sid)
        try:
            removed = service.store.get(sid).undo()
        except EngineError as e:
            raise ApiError(409, str(e)) from None
        info.updated = time.time()
        return service.session_view(info) | {"removed": len(removed)}

    @app.websocket("/api/sessions/{sid}/ws")
    async def session_ws(websocket: WebSocket, sid: str):
        """Client → {"type": "send", "content", "options"} | {"type": "regenerate", "options"} | {"type": "stop"}.
        Server → {"type": "start"}, {"type": "piece", "kind": "content" | "reasoning", "text"}, {"type": "done",
        "usage", "finish_reason", "tokens_per_s"}, {"type": "error", "message"}."""
        await websocket.accept()
        if sid not in service.sessions:
            await websocket.send_json({"type": "error", "message": f"no session {sid!r}", "status": 404})
            await websocket.close(code=4404)
            return
        turn: asyncio.Task | None = None
        cancel = threading.Event()

        async def send(frame: dict, cancel: threading.Event) -> None:
            """Send a frame; one that cannot be sent means the client has gone, which cancels the turn."""
            try:
                await websocket.send_json(frame)
            except Exception:  # noqa: BLE001 — WebSocketDisconnect, RuntimeError after close, OSError
                cancel.set()

        async def run_turn(msg: dict, cancel: threading.Event):
            """One send / regenerate: start, pieces, then done; or an error frame, whatever fails."""
            try:
                info, chat = service.session(sid), service.store.get(sid)
                options = msg.get("options") or {}
                if not isinstance(options, dict):
                    raise ApiError(400, "'options' must be an object")
                sampling = asdict(_sampling(options, llm))
                if "enable_thinking" in options:
                    if not (options["enable_thinking"] is None or isinstance(options["enable_thinking"], bool)):
                        raise ApiError(400, "'enable_thinking' must be true, false or null")
                    chat.enable_thinking = options["enable_thinking"]
                if msg["type"] == "send":
                    content = msg.get("content")
                    if not isinstance(content, str) or not content.strip():
                        raise ApiError(400, "the message is empty")
                    if info.title == "New chat":
                        info.title = content.strip().splitlines()[0][:60]
                    make = lambda: chat.send(content, **sampling)  # noqa: E731
                else:
                    make = lambda: chat.regenerate(**sampling)  # noqa: E731
                async with aclosing(service.run(make, cancel)) as pieces:
                    await send({"type": "start"}, cancel)
                    async for piece in pieces:
                        await send({"type": "piece", "kind": piece.kind, "text": piece.text}, cancel)
                u = chat.last_usage
                info.updated = time.time()
                await send({"type": "done", "finish_reason": u.finish_reason if u else None,
                            "usage": _usage(u) if u else None, "tokens_per_s": round(u.decode_tps, 2) if u else 0.0,
                            "session": service.session_view(info, messages=False)}, cancel)
            except Exception as e:  # noqa: BLE001 — every failed turn ends with an error frame
                error = _failure(e, uuid.uuid4().hex[:16])
                await send({"type": "error", "message": error.message, "status": error.status}, cancel)

        try:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                try:
                    msg = _ws_message(frame)
                except ApiError as e:
                    await websocket.send_json({"type": "error", "message": e.message, "status": e.status})
                    continue
                if msg.get("type") == "stop":
                    cancel.set()
                elif msg.get("type") in ("send", "regenerate"):
                    if turn is not None and not turn.done():
                        await websocket.send_json({"type": "error", "message": "an answer is streaming; stop it "
                                                                               "first", "status": 409})
                        continue
                    cancel = threading.Event()
                    turn = asyncio.create_task(run_turn(msg, cancel))
                else:
                    await websocket.send_json({"type": "error", "message": "type must be send, regenerate or stop",
                                               "status": 400})
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            cancel.set()
            if turn is not None:
                turn.cancel()  # a queued turn leaves the queue now; a running one stops before its next token
                await asyncio.wait((turn,))

    @app.get("/")
    async def index():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
