"""The web UI's conversations: the /api/sessions REST routes (list, create, read, rename or re-prompt, delete,
undo) and each session's WebSocket, which streams its turns."""
import asyncio
import threading
import time
import uuid
from contextlib import aclosing
from dataclasses import asdict

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect

from engine.errors import EngineError
from engine.server.errors import ApiError, counted, failure
from engine.server.openai_api import usage
from engine.server.service import Service, SessionInfo, service_of
from engine.server.validation import read_json, sampling_params, ws_message

router = APIRouter(prefix="/api/sessions")


@router.get("")
async def list_sessions(request: Request):
    service = service_of(request)
    infos = sorted(service.sessions.values(), key=lambda s: -s.updated)
    return {"sessions": [service.session_view(s, messages=False) for s in infos]}


@router.post("")
async def create_session(request: Request):
    service = service_of(request)
    body = await read_json(request)
    title, system = body.get("title") or "New chat", body.get("system")
    if not isinstance(title, str) or (system is not None and not isinstance(system, str)):
        raise ApiError(400, "'title' and 'system' must be strings")
    if service.llm.template is None:
        raise ApiError(400, "this model has no chat template, so it cannot chat")
    now = time.time()
    info = SessionInfo(uuid.uuid4().hex[:12], title[:200], now, now)
    service.store.create(info, system=system or None)  # saved in the sessions db; listed in service.sessions
    return service.session_view(info)


@router.get("/{sid}")
async def get_session(sid: str, request: Request):
    service = service_of(request)
    return service.session_view(service.session(sid))


@router.patch("/{sid}")
async def update_session(sid: str, request: Request):
    service = service_of(request)
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
    service.store.save(sid)
    return service.session_view(info)


@router.delete("/{sid}")
async def delete_session(sid: str, request: Request):
    service = service_of(request)
    service.session(sid)
    service.store.get(sid).cancel()
    service.store.drop(sid)
    service.sessions.pop(sid, None)
    return {"id": sid, "deleted": True}


@router.post("/{sid}/undo")
async def undo(sid: str, request: Request):
    service = service_of(request)
    info = service.session(sid)
    try:
        removed = service.store.get(sid).undo()
    except EngineError as e:
        raise ApiError(409, str(e)) from None
    info.updated = time.time()
    return service.session_view(info) | {"removed": len(removed)}


@router.websocket("/{sid}/ws")
async def session_ws(websocket: WebSocket, sid: str):
    """Client → {"type": "send", "content", "options"} | {"type": "regenerate", "options"} | {"type": "stop"}.
    Server → {"type": "start"}, {"type": "piece", "kind": "content" | "reasoning", "text"}, {"type": "done",
    "usage", "finish_reason", "tokens_per_s"}, {"type": "error", "message"}."""
    await websocket.accept()
    service = service_of(websocket)
    if sid not in service.sessions:
        await websocket.send_json({"type": "error", "message": f"no session {sid!r}", "status": 404})
        await websocket.close(code=4404)
        return
    socket = SessionSocket(websocket, service, sid)
    try:
        await socket.serve()
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        await socket.end()


class SessionSocket:
    """One WebSocket of a session: its frames in, its turns out; at most one turn runs, and stop cancels it."""

    def __init__(self, websocket: WebSocket, service: Service, sid: str):
        self.websocket, self.service, self.sid = websocket, service, sid
        self.turn: asyncio.Task | None = None
        self.cancel = threading.Event()

    async def serve(self) -> None:
        """Handle the client's frames until it disconnects; a bad frame is answered with an error frame."""
        while True:
            frame = await self.websocket.receive()
            if frame["type"] == "websocket.disconnect":
                return
            try:
                msg = ws_message(frame)
            except ApiError as e:
                await self.websocket.send_json({"type": "error", "message": e.message, "status": e.status})
                continue
            if msg.get("type") == "stop":
                self.cancel.set()
            elif msg.get("type") in ("send", "regenerate"):
                if self.turn is not None and not self.turn.done():
                    await self.websocket.send_json({"type": "error", "message": "an answer is streaming; stop it "
                                                                                "first", "status": 409})
                    continue
                self.cancel = threading.Event()
                self.turn = asyncio.create_task(self.run_turn(msg, self.cancel))
            else:
                await self.websocket.send_json({"type": "error", "message": "type must be send, regenerate or stop",
                                                "status": 400})

    async def end(self) -> None:
        """Stop the turn: a queued one leaves the queue now, a running one stops before its next token."""
        self.cancel.set()
        if self.turn is not None:
            self.turn.cancel()
            await asyncio.wait((self.turn,))

    async def send(self, frame: dict, cancel: threading.Event) -> None:
        """Send a frame; one that cannot be sent means the client has gone, which cancels the turn."""
        try:
            await self.websocket.send_json(frame)
        except Exception:  # noqa: BLE001 — WebSocketDisconnect, RuntimeError after close, OSError
            cancel.set()

    async def run_turn(self, msg: dict, cancel: threading.Event) -> None:
        """One send / regenerate: start, pieces, then done; or an error frame, whatever fails."""
        try:
            info, chat = self.service.session(self.sid), self.service.store.get(self.sid)
            make = _turn(msg, info, chat, self.service.llm)
            async with aclosing(self.service.run(make, cancel)) as pieces:
                await self.send({"type": "start"}, cancel)
                async for piece in pieces:
                    await self.send({"type": "piece", "kind": piece.kind, "text": piece.text}, cancel)
            u = chat.last_usage
            self.service.metrics.usage(u)
            info.updated = time.time()
            await self.send({"type": "done", "finish_reason": u.finish_reason if u else None,
                             "usage": usage(u) if u else None, "tokens_per_s": round(u.decode_tps, 2) if u else 0.0,
                             "session": self.service.session_view(info, messages=False)}, cancel)
        except Exception as e:  # noqa: BLE001 — every failed turn ends with an error frame
            error = counted(self.websocket, failure(e, uuid.uuid4().hex[:16]))
            await self.send({"type": "error", "message": error.message, "status": error.status}, cancel)


def _turn(msg: dict, info: SessionInfo, chat, llm):
    """The generation of a send / regenerate frame (its options checked and applied to chat), to run on a worker;
    a first message names a new chat."""
    options = msg.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object")
    sampling = asdict(sampling_params(options, llm))
    if "enable_thinking" in options:
        if not (options["enable_thinking"] is None or isinstance(options["enable_thinking"], bool)):
            raise ApiError(400, "'enable_thinking' must be true, false or null")
        chat.enable_thinking = options["enable_thinking"]
    if msg["type"] != "send":
        return lambda: chat.regenerate(**sampling)
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ApiError(400, "the message is empty")
    if info.title == "New chat":
        info.title = content.strip().splitlines()[0][:60]
    return lambda: chat.send(content, **sampling)
