"""Serving: the OpenAI-compatible HTTP API, the web UI's sessions over WebSocket and the UI itself (web/), as one
FastAPI app built by `create_app(llm, ...)` (app.py; service.py admission and workers on one batching runner,
openai_api.py the /v1 routes, sessions.py the UI's sessions, ui.py / and /static, validation.py request checks,
errors.py OpenAI-shaped errors). It imports engine.chat, engine.runtime and the floors below, never engine.cli;
the names below load on first use, so importing a submodule does not pull in FastAPI and every route."""

__all__ = ["create_app", "Service", "Run", "SessionInfo", "ApiError", "ClientGone", "RequestIds", "engine_error",
           "internal_error", "parse_json", "MAX_BODY_BYTES", "WEB_DIR"]


def __getattr__(name):
    if name in __all__:
        from engine.server import app
        return getattr(app, name)
    raise AttributeError(f"module 'engine.server' has no attribute {name!r}")
