"""The HTTP server's app: the OpenAI-compatible API, conversations for the web UI, and the UI itself
(engine/server/web/).

    app = create_app(llm, max_batch=8, max_queue=32, kv_budget=1 << 30)   # a FastAPI app; run it with uvicorn

create_app puts a Service (service.py: admission, worker threads on one batching runner, pooled caches, UI
sessions, its Metrics) in app.state and includes the routes of openai_api.py (/v1/models, /v1/chat/completions,
/v1/completions, /health), sessions.py (/api/sessions and each session's WebSocket), metrics.py (/metrics) and
ui.py (/ and /static); validation.py checks what requests carry, and errors.py answers every failure in OpenAI's
error shape.
"""
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.server import metrics, openai_api, sessions, ui
from engine.server.errors import ApiError, ClientGone, RequestIds, add_exception_handlers, engine_error, internal_error
from engine.server.service import Run, Service, SessionInfo
from engine.server.ui import WEB_DIR
from engine.server.validation import MAX_BODY_BYTES, parse_json

__all__ = ["create_app", "Service", "Run", "SessionInfo", "ApiError", "ClientGone", "RequestIds", "engine_error",
           "internal_error", "parse_json", "MAX_BODY_BYTES", "WEB_DIR"]


def create_app(llm, max_batch: int = 8, max_queue: int = 32, kv_budget: int = 1 << 30, model_id: str | None = None,
               max_tokens_default: int | None = None, sessions_db=":memory:"):
    """The FastAPI app serving llm (an engine.LLM). model_id: the id it was started with, accepted beside the
    resolved id and its registry aliases; max_tokens_default: the most tokens a request without max_tokens
    generates (None: the rest of the context); sessions_db: where the UI sessions are saved, a path, ":memory:"
    (nothing written to disk) or an engine.chat.sessions_db.SessionsDB. See the module docstring and README.md."""
    service = Service(llm, max_batch, max_queue, kv_budget, model_id, max_tokens_default, sessions_db=sessions_db)

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    app = FastAPI(title="engine", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(RequestIds)
    app.add_middleware(metrics.Count)  # outside RequestIds: it sees the 500 that RequestIds answers
    app.state.service = service
    add_exception_handlers(app)
    for module in (openai_api, sessions, metrics, ui):
        app.include_router(module.router)
    ui.mount_static(app)
    return app
