"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions and /v1/completions (a JSON body, or server-sent
events in OpenAI's chunk format) and /health. A client that goes away cancels its request."""
import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing, closing
from dataclasses import asdict, replace

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.runtime.generate import GenerationStats, Piece
from engine.server.errors import ApiError, ClientGone, counted, failure
from engine.server.logprobs import chat_logprobs, prompt_logprobs, text_logprobs
from engine.server.service import Run, service_of
from engine.server.validation import (chat_messages, check_model, completion_prompt, enable_thinking,
                                      include_usage, logprobs_setting, read_json, sampling_params, tool_options)

router = APIRouter()


def usage(stats: GenerationStats) -> dict:
    """OpenAI's usage object of a generation."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def _finish(stats: GenerationStats) -> str:
    return stats.finish_reason if stats.finish_reason in ("length", "tool_calls") else "stop"


def sse(payload) -> str:
    """One server-sent event: payload (JSON, or a string such as [DONE]) as its data."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _collect(items) -> list:
    return [x async for x in items]


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (call it after the request body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def while_connected(request: Request, awaitable):
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


async def answer(request: Request, body: dict, kind: str, make, stats: Callable[[], GenerationStats], shape):
    """Run make() (pieces) and answer as OpenAI does: a JSON body, or SSE chunks ending with [DONE].
    stats() gives the generation's statistics once it has ended; shape(pieces, delta, finish) a choice.
    A client that disconnects before its answer is complete (or starts streaming) cancels it."""
    service = service_of(request)
    rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion", "created": created,
            "model": service.model_id}
    with_usage = include_usage(body)
    pieces = service.run(make, threading.Event())
    if not body.get("stream"):
        async with aclosing(pieces):
            parts = await while_connected(request, _collect(pieces))
        service.metrics.usage(stats())
        return JSONResponse(head | {"choices": [shape(parts, None, _finish(stats()))], "usage": usage(stats())})
    head["object"] += ".chunk" if kind == "chat" else ""
    try:  # fail before the stream starts when the request itself is bad
        first = await while_connected(request, anext(pieces, None))
    except BaseException:
        await pieces.aclose()
        raise
    events = _events(request, head, kind == "chat", first, pieces, stats, shape, with_usage)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, head: dict, chat: bool, first, pieces: Run, stats, shape, with_usage: bool):
    """A streamed answer's events: (chat: the assistant role,) first and the other pieces, the finish reason,
    (with_usage: the usage,) [DONE]; an error once the stream has started is an event of its own."""
    try:
        if chat:
            yield sse(head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]})
        if first is not None:
            yield sse(head | {"choices": [shape([first], True, None)]})
            async for piece in pieces:
                yield sse(head | {"choices": [shape([piece], True, None)]})
        service_of(request).metrics.usage(stats())
        yield sse(head | {"choices": [shape([], True, _finish(stats()))]})
        if with_usage:
            yield sse(head | {"choices": [], "usage": usage(stats())})
    except Exception as e:  # noqa: BLE001 — the stream has started: the error goes in it
        yield sse(counted(request, failure(e, request.state.request_id)).body())
    finally:
        await pieces.aclose()
    yield sse("[DONE]")


def _chat_shape(asked: bool):
    """shape(pieces, delta, finish): a chat choice of pieces, a delta (streamed) or the whole message, reasoning
    apart from content; asked: logprobs were asked for."""
    def shape(pieces, delta, finish) -> dict:
        content = "".join(p.text for p in pieces if p.kind == "content")
        reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
        calls = [p.tool_call.to_openai() | ({"index": p.index} if delta else {}) for p in pieces
                 if p.kind == "tool_call"]  # streamed: each call whole in one delta, arguments included
        lp = chat_logprobs(pieces, asked and (bool(pieces) or not delta))
        if delta:
            d = ({"content": content} if content else {}) | ({"reasoning_content": reasoning} if reasoning else {})
            d |= {"tool_calls": calls} if calls else {}
            return {"index": 0, "delta": d, "logprobs": lp, "finish_reason": finish}
        msg = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        if reasoning:
            msg["reasoning_content"] = reasoning.strip("\n")
        return {"index": 0, "message": msg, "logprobs": lp, "finish_reason": finish}
    return shape


def _text_shape(asked: bool):
    """shape(pieces, delta, finish): a completion choice of pieces; its logprobs' text offsets count from the
    start of the whole answer, chunk after chunk."""
    offset = 0

    def shape(pieces, delta, finish) -> dict:
        nonlocal offset
        text = "".join(pieces)
        entries = [t for p in pieces for t in getattr(p, "logprobs", ())]
        lp = text_logprobs(entries, offset, asked and (bool(pieces) or not delta))
        offset += len(text)
        return {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}
    return shape


@router.get("/health")
async def health(request: Request):
    return service_of(request).health()


@router.get("/v1/models")
async def models(request: Request):
    service = service_of(request)
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "engine",
                                       "context_length": service.llm.n_ctx, "max_tokens_default":
                                       service.max_tokens_default, "sampling_defaults":
                                       asdict(service.llm.sampling_defaults)} for i in service.model_ids]}


async def _generation_request(request: Request, chat: bool):
    """(Service, body, SamplingParams) of a completion request: the JSON body read, its model, sampling and
    logprobs fields checked (400 otherwise). A response_format is compiled on a worker thread, off the event loop
    (a large schema or grammar can take a while). Completions' echo with max_tokens 0 only scores the prompt:
    max_tokens is then left to the default here."""
    service = service_of(request)
    body = await read_json(request)
    check_model(body, service.model_ids)
    top = logprobs_setting(body, chat)
    fields = {k: v for k, v in body.items() if not (k == "max_tokens" and v == 0 and body.get("echo") is True)}
    if body.get("response_format") is not None:
        params = await asyncio.to_thread(sampling_params, fields, service.llm)
    else:
        params = sampling_params(fields, service.llm)
    return service, body, replace(params, logprobs=top)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    service, body, params = await _generation_request(request, chat=True)
    llm = service.llm
    messages = chat_messages(body)
    tools, choice = tool_options(body)
    thinking = enable_thinking(body)
    if llm.template is None:
        raise ApiError(400, "this model has no chat template; use /v1/completions with a raw prompt")
    stats = [GenerationStats()]  # the turn's usage, once the worker thread has it

    def make():
        sid, chat, n_prompt = service.api_chat(messages, thinking, None if choice.mode == "none" else tools)
        try:
            max_tokens = service.max_tokens(params.max_tokens, n_prompt)
            gen = chat.regenerate(**asdict(params) | {"max_tokens": max_tokens}, tool_choice=choice)
            with closing(gen):
                yield from gen
        finally:
            stats[0] = chat.last_usage or stats[0]
            service.release_api_chat(sid)

    return await answer(request, body, "chat", make, lambda: stats[0], _chat_shape(params.logprobs is not None))


@router.post("/v1/completions")
async def completions(request: Request):
    service, body, params = await _generation_request(request, chat=False)
    llm = service.llm
    prompt = completion_prompt(body)
    ids = llm.encode_prompt(prompt)
    echo, score_only = body.get("echo") is True, body.get("echo") is True and body.get("max_tokens") == 0
    max_tokens = 0 if score_only else service.max_tokens(params.max_tokens, len(ids))
    if len(ids) + max_tokens > llm.n_ctx:
        raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed the "
                       f"{llm.n_ctx}-token context; shorten the prompt or lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")
    stats = GenerationStats(prompt_tokens=len(ids), finish_reason="length")

    def make():
        if echo:
            text = prompt if isinstance(prompt, str) else llm.tokenizer.decode(ids)
            yield Piece(text, prompt_logprobs(service.served, ids, params.logprobs or 0)
                        if params.logprobs is not None else ())
        if not score_only:
            cache = llm.new_cache(len(ids) + max_tokens)
            yield from service.served.stream(ids, cache, params, max_tokens, stats=stats)

    return await answer(request, body, "text", make, lambda: stats, _text_shape(params.logprobs is not None))
