"""A live engine server on 127.0.0.1 (uvicorn on a thread) for the server and browser tests."""
import json
import socket
import threading
import time

import httpx


class LiveServer:
    """Serve llm on a free loopback port; url, app, service; stop() shuts it down."""

    def __init__(self, llm, **options):
        import uvicorn

        from engine.server import create_app
        self.app = create_app(llm, **options)
        self.service = self.app.state.service
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def ws_turn(ws, message: dict) -> tuple[str, dict]:
    """Send a UI WebSocket message; (the streamed text, the closing "done" or "error" message)."""
    ws.send(json.dumps(message))
    text = ""
    while True:
        m = json.loads(ws.recv(timeout=60))
        if m["type"] == "piece":
            text += m["text"]
        elif m["type"] in ("done", "error"):
            return text, m
