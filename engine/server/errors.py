"""The server's errors, answered in OpenAI's shape: bad input (malformed or too deeply nested JSON, lone
surrogates, wrong types, non-finite or out-of-range numbers) is a 400, an unexpected exception a 500 naming the
request's X-Request-Id (the connection stays open); ApiError, the request-id middleware and the exception handlers."""
import logging
import uuid

from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (ContextOverflowError, EngineError, InvalidRequestError, TemplateError,
                           TokenizerError)
from engine.server.metrics import metrics_of

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


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing more is sent."""


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


def failure(e: Exception, rid: str) -> ApiError:
    """What to tell the client about an exception once its answer has started (in the stream or socket)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, EngineError):
        return engine_error(e)
    log.error("request %s failed", rid, exc_info=e)
    return internal_error(rid)


def counted(conn, e: ApiError) -> ApiError:
    """e, counted in the metrics (by type and code) of the app that conn (a request, WebSocket or ASGI scope)
    came to."""
    metrics = metrics_of(conn)
    if metrics is not None:
        metrics.error(e.type, e.code)
    return e


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
            error = counted(scope, internal_error(rid))
            await JSONResponse(error.body(), status_code=500)(scope, receive, send_with_id)


async def api_error(request, e: ApiError):
    return JSONResponse(counted(request, e).body(), status_code=e.status, headers=e.headers)


async def engine_failure(request, e: EngineError):
    return await api_error(request, engine_error(e))


async def client_gone(request, e: ClientGone):
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


async def http_error(request, e: StarletteHTTPException):
    """Starlette's own errors (an unknown path: 404, a wrong method: 405) in OpenAI's shape."""
    type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    error = counted(request, ApiError(e.status_code, str(e.detail), type_))
    return JSONResponse(error.body(), status_code=e.status_code)


def add_exception_handlers(app) -> None:
    """Answer ApiError, EngineError, ClientGone and Starlette's HTTP errors as above."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(EngineError, engine_failure)
    app.add_exception_handler(ClientGone, client_gone)
    app.add_exception_handler(StarletteHTTPException, http_error)
