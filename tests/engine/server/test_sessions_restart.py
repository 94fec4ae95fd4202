"""UI sessions survive the server: `python -m engine.serve --sessions-db FILE` in a subprocess, one finished turn,
a second turn SIGKILLed mid-stream, a restart on the same file. The session, its title, system prompt and settings
and the finished turn are all there (the turn in flight is not), and a new turn recomputes the conversation. Also:
a corrupt --sessions-db is one `error:` line and exit status 1, before the model loads."""
import json
import signal
import subprocess
from pathlib import Path

import httpx
from websockets.sync.client import connect

import engine
from engine.cli import serve
from live_server import ws_turn
from serve_process import start_serve

ROOT = Path(__file__).parents[3]
TINY = ROOT / "tests" / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
OPTIONS = {"max_tokens": 6, "temperature": 0, "repeat_penalty": 1.3, "enable_thinking": False}


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    """engine.serve on a free port with db as its sessions file; (process, base url) once it serves."""
    return start_serve("--model", str(TINY), "--threads", "1", "--device", "cpu", "--sessions-db", str(db))


def first_life(p: subprocess.Popen, url: str) -> tuple[str, list[dict]]:
    """Two sessions, one turn finished in the first, a rename; then a second turn, during which the server is
    SIGKILLed (with the socket still open: closing it first would stop the turn, and a stopped turn is saved).
    Returns the first session's id and its messages after the finished turn."""
    api = url + "/api/sessions"
    sid = httpx.post(api, json={"system": "Be brief."}).json()["id"]
    httpx.post(api, json={"title": "Empty one"})
    with connect(url.replace("http", "ws") + f"/api/sessions/{sid}/ws") as ws:
        _, done = ws_turn(ws, {"type": "send", "content": "Hello there", "options": OPTIONS})
        assert done["type"] == "done" and done["session"]["title"] == "Hello there"
        assert httpx.patch(f"{api}/{sid}", json={"title": "Kept title"}).status_code == 200
        messages = httpx.get(f"{api}/{sid}").json()["messages"]
        ws.send(json.dumps({"type": "send", "content": "Now a long story",
                            "options": {**OPTIONS, "max_tokens": 200}}))
        assert json.loads(ws.recv(timeout=60))["type"] == "start"
        assert json.loads(ws.recv(timeout=60))["type"] == "piece"  # mid-answer: 199 tokens to go
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    return sid, messages


def test_sessions_survive_a_sigkill_mid_stream_and_a_restart(tmp_path):
    db = tmp_path / "sessions.sqlite3"
    p, url = start_server(db)
    try:
        sid, messages = first_life(p, url)
    finally:
        p.kill()
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL and len(messages) == 2

    p, url = start_server(db)
    try:
        api = url + "/api/sessions"
        listed = httpx.get(api).json()["sessions"]
        assert sorted(s["title"] for s in listed) == ["Empty one", "Kept title"]
        got = httpx.get(f"{api}/{sid}").json()
        assert got["title"] == "Kept title" and got["system"] == "Be brief." and got["enable_thinking"] is False
        assert got["messages"] == messages  # the finished turn; the one in flight left nothing
        with connect(url.replace("http", "ws") + f"/api/sessions/{sid}/ws") as ws:
            text, done = ws_turn(ws, {"type": "send", "content": "Again", "options": OPTIONS})
        assert done["type"] == "done" and done["usage"]["completion_tokens"] == 6
        assert done["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # the cache was recomputed
        after = httpx.get(f"{api}/{sid}").json()["messages"]
        assert after[:2] == messages and after[2:] == [{"role": "user", "content": "Again"},
                                                       {"role": "assistant", "content": text}]
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0


def test_a_corrupt_sessions_db_is_an_error_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(engine, "load", load)
    bad = tmp_path / "sessions.sqlite3"
    bad.write_bytes(b"not sqlite at all " * 100)
    assert serve.main(["--port", "0", "--sessions-db", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot use the sessions database {bad} ") and "Traceback" not in err
    assert "--sessions-db :memory:" in err and err.count("\n") == 1
