"""Request fuzzing of the server (engine/server/): a seeded generator of bad requests (and valid ones at the
edges) sent, one after another on one keep-alive connection, to a live 127.0.0.1 server serving the tiny Qwen3
fixture; WebSocket cases send junk frames to a session's socket.

Every answer is classified: a JSON 4xx with OpenAI's error shape ("rejected") and a 2xx for a request that is
valid ("answered") are fine; a 5xx, a 4xx that is not OpenAI-shaped JSON ("plain_text"), a 2xx for an invalid
request ("accepted_invalid"), a 4xx for a valid one ("rejected_valid"), a broken stream, a reset connection or a
timeout is a defect. A WebSocket case is "ws_ok" when every junk frame got an error frame and a turn then worked
on the same socket. At the end /health must answer with its counters back to 0.

A fixed-seed sample of 40 cases runs in the default suite; `python -m pytest -m fuzz tests/fuzz/test_server_fuzz.py
-s` sends 400 and prints the counts by outcome.
"""
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

import engine

sys.path.append(str(Path(__file__).parent.parent / "engine" / "server"))
from live_server import LiveServer  # noqa: E402

TINY = Path(__file__).parent.parent / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
N_CTX, VOCAB = 256, 384  # the fixture's vocabulary
SAMPLE, FULL = 40, 400
TIMEOUT_S = 30.0
SURROGATE = "a\ud800b"
JUNK = [True, False, None, "x", "", [], {}, [1], {"a": 1}, 1.5, -1, 0, 1, 2, 2 ** 64, -(2 ** 63) - 1, 1e308,
        -1e308, 5e-324, float("nan"), float("inf"), float("-inf"), SURROGATE, [SURROGATE], {"k": SURROGATE}, "1"]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
COMPLETION = {"prompt": "hi", "max_tokens": 2, "temperature": 0}
GOOD_TURN = {"type": "send", "content": "hi", "options": {"max_tokens": 2, "temperature": 0}}
OUTCOMES_OK = ("answered", "rejected", "ws_ok")


@dataclass
class Case:
    """One request. expect: "ok" (valid: a 2xx), "error" (a JSON 4xx) or "any" (either). A WebSocket case
    (frames set) sends each junk frame to path's socket, expecting an error frame for each, then a turn."""
    what: str
    expect: str
    method: str = "POST"
    path: str = "/v1/chat/completions"
    body: bytes = b""
    headers: dict = field(default_factory=lambda: {"content-type": "application/json"})
    frames: list | None = None


def dumps(value) -> bytes:
    """JSON as a client could send it: lone surrogates as \\ud800 escapes, NaN and Infinity as bare tokens."""
    return json.dumps(value, allow_nan=True).encode()


# ---- the oracle: which values the API accepts ------------------------------------------------------------------


def has_surrogate(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def number(lo=None, hi=None, integer=False, lo_open=False, hi_open=False, any_above=None):
    """A check of a numeric field: True (valid), False (invalid) or None (either: e.g. too long for the context)."""
    def check(v):
        if v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            return False
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open
                                                                                          else v > hi)):
            return False
        return None if any_above is not None and v > any_above else True
    return check


def stop_ok(v) -> bool:
    stops = [v] if isinstance(v, str) else v
    return v is None or (isinstance(stops, list) and len(stops) <= 16 and all(isinstance(s, str) and s for s in stops))


def options_ok(key: str):
    """stream_options / chat_template_kwargs: empty (any falsy value) or an object whose key is a boolean."""
    return lambda v: not v or (isinstance(v, dict) and (v.get(key) is None if key == "enable_thinking" else
                                                        key not in v or isinstance(v[key], bool)))


SAMPLING = {
    "max_tokens": number(1, N_CTX, integer=True, any_above=32),
    "max_completion_tokens": number(1, N_CTX, integer=True, any_above=32),
    "temperature": number(0, 2), "top_p": number(0, 1, lo_open=True),
    "seed": number(-(2 ** 63), 2 ** 64, integer=True, hi_open=True), "top_k": number(1, integer=True),
    "min_p": number(0, 1, hi_open=True), "repeat_penalty": number(0, lo_open=True),
    "n": lambda v: v is None or (type(v) is int and v == 1), "stop": stop_ok,
    "stream": lambda v: v is None or isinstance(v, bool),
}
CHAT_FIELDS = SAMPLING | {"stream_options": options_ok("include_usage"),
                          "chat_template_kwargs": lambda v: not v or (isinstance(v, dict) and (
                              v.get("enable_thinking") is None or isinstance(v.get("enable_thinking"), bool))),
                          "user": lambda v: True, "logprobs": lambda v: v is None or isinstance(v, bool)}


def prompt_ok(v):
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
        v = v[0]
    if isinstance(v, str):
        return bool(v)
    return isinstance(v, list) and bool(v) and all(type(t) is int and 0 <= t < VOCAB for t in v)


def content_ok(v):
    if not v or isinstance(v, str):
        return True
    return isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"),
                                                                                                      str) for p in v)


def label(valid) -> str:
    return {True: "ok", False: "error", None: "any"}[valid]


# ---- the generator -------------------------------------------------------------------------------------------


class Generator:
    """Cases drawn from a seeded random stream, by kind (weights in KINDS)."""

    def __init__(self, seed: int, model_id: str):
        self.rng, self.model_id = random.Random(seed), model_id

    def junk(self):
        return self.rng.choice(JUNK)

    def field(self, base: dict, fields: dict, path: str) -> Case:
        name = self.rng.choice([*fields, "model"])
        value = self.rng.choice([*JUNK, self.model_id])
        valid = (value in (None, "", self.model_id) if name == "model" else fields[name](value))
        valid = False if has_surrogate(value) else valid
        stream = name == "stream" and value is True
        return Case(f"{path} {name}={value!r}", label(valid if not stream else True), path=path,
                    body=dumps(base | {name: value}))

    def chat_field(self) -> Case:
        return self.field(CHAT, CHAT_FIELDS, "/v1/chat/completions")

    def completion_field(self) -> Case:
        fields = SAMPLING | {"prompt": prompt_ok, "echo": lambda v: v is None or isinstance(v, bool),
                             "logprobs": lambda v: v is None or (type(v) is int and 0 <= v <= 20)}
        case = self.field(COMPLETION, fields, "/v1/completions")
        if self.rng.random() < 0.3:  # prompts as token ids, in and out of the vocabulary
            ids = [self.rng.choice([0, 1, VOCAB - 1, VOCAB, -1, 2 ** 64]) for _ in range(self.rng.randint(1, 3))]
            case = Case(f"prompt ids {ids}", label(prompt_ok(ids)), path="/v1/completions",
                        body=dumps(COMPLETION | {"prompt": ids}))
        return case

    def message(self) -> Case:
        role, content = self.rng.choice(["user", "system", "wizard", "developer", 5, None]), self.junk()
        if self.rng.random() < 0.3:
            content = [{"type": self.rng.choice(["text", "image_url", 3]), "text": self.junk()}]
        msgs = [{"role": role, "content": content}] + ([] if role == "user" else [{"role": "user", "content": "q"}])
        valid = role in ("user", "system", "developer") and content_ok(content) and not has_surrogate(content)
        if self.rng.random() < 0.2:
            msgs, valid = self.junk(), False
        return Case(f"messages={msgs!r}"[:120], label(valid), body=dumps(CHAT | {"messages": msgs}))

    def raw_body(self) -> Case:
        text = dumps(CHAT)
        choice = self.rng.randrange(7)
        if choice == 0:
            return Case("truncated JSON", "error", body=text[:self.rng.randrange(len(text))])
        if choice == 1:
            return Case("bytes that are not UTF-8", "error", body=text.replace(b'"hi"', b'"\xff\xfe\xc3"'))
        if choice == 2:
            depth = self.rng.choice([65, 100, 1000, 100_000])
            return Case(f"nested {depth} deep", "error", body=b'{"messages": ' + b"[" * depth + b"]" * depth + b"}")
        if choice == 3:
            return Case("not an object", "error", body=dumps(self.rng.choice([[CHAT], "x", 1, None, True])))
        if choice == 4:
            return Case("duplicate keys, the last valid", "ok", body=b'{"messages": 5, ' + text[1:])
        if choice == 5:
            return Case("over the body limit", "error", body=b'{"x": "' + b"y" * (1 << 20) + b'"}')
        return Case("bare NaN token", "error", body=text.replace(b'"temperature": 0', b'"temperature": NaN'))

    def huge(self) -> Case:
        n = self.rng.choice([10_000, 200_000, 900_000])
        if self.rng.random() < 0.5:  # over the 256-token context
            return Case(f"{n}-character message", "error",
                        body=dumps(CHAT | {"messages": [{"role": "user", "content": "ab " * (n // 3)}]}))
        return Case(f"{n}-character ignored field", "ok", body=dumps(CHAT | {"user": "u" * n}))

    def content_type(self) -> Case:
        kind = self.rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                "", "application/json; charset=latin-1"])
        if self.rng.random() < 0.5:
            return Case(f"form body as {kind!r}", "error", body=b"messages=hi&max_tokens=2",
                        headers={"content-type": kind} if kind else {})
        return Case(f"JSON body as {kind!r}", "ok", body=dumps(CHAT), headers={"content-type": kind} if kind else {})

    def route(self) -> Case:
        method, path = self.rng.choice([
            ("GET", "/v1/chat/completions"), ("PUT", "/health"), ("DELETE", "/v1/models"), ("POST", "/v1/models"),
            ("GET", "/v1/nothing"), ("GET", "/%ff%fe"), ("PATCH", "/v1/completions"), ("OPTIONS", "/"),
            ("GET", "/static/nothing.js"), ("GET", "/api/sessions/nope"), ("DELETE", "/api/sessions/nope"),
            ("POST", "/api/sessions/nope/undo"), ("GET", "/api/sessions/%ed%a0%80"), ("POST", "/health")])
        return Case(f"{method} {path}", "error", method=method, path=path, body=b"")

    def session(self) -> Case:
        title, system = self.junk(), self.junk()
        if self.rng.random() < 0.5:
            valid = not has_surrogate([title, system]) and (not title or isinstance(title, str)) and (
                system is None or isinstance(system, str))
            return Case(f"new session title={title!r} system={system!r}", label(valid), path="/api/sessions",
                        body=dumps({"title": title, "system": system}))
        name, value = self.rng.choice([("title", title), ("system", system)])
        valid = not has_surrogate(value) and (isinstance(value, str) and bool(value.strip()) if name == "title"
                                              else value is None or isinstance(value, str))
        return Case(f"rename {name}={value!r}", label(valid), method="PATCH", path="/api/sessions/{sid}",
                    body=dumps({name: value}))

    def websocket(self) -> Case:
        pool = ["not json", b"\x00\xffbinary", "[1, 2]", '"text"', "7", "[" * 2000 + "]" * 2000,
                dumps({"type": "send", "content": SURROGATE}).decode(), dumps({"type": self.junk()}).decode(),
                dumps({"type": "send", "content": self.rng.choice(["", "  ", 5, None])}).decode()]
        name = self.rng.choice(list(SAMPLING))
        bad = [v for v in JUNK if SAMPLING[name](v) is False]
        pool.append(dumps({"type": "send", "content": "hi", "options": {name: self.rng.choice(bad)}}).decode())
        frames = self.rng.sample(pool, self.rng.randint(1, 4))
        return Case(f"WebSocket frames {[f[:40] for f in frames]}", "error", path="/api/sessions/{sid}/ws",
                    frames=frames)

    def valid(self) -> Case:
        edge = self.rng.choice([{}, {"stream": True}, {"temperature": 5e-324}, {"repeat_penalty": 1e-308},
                                {"seed": -1, "temperature": 1}, {"seed": 2 ** 64 - 1, "temperature": 1},
                                {"top_p": 5e-324, "temperature": 1}, {"top_k": 2 ** 70}, {"min_p": 0.999},
                                {"repeat_penalty": 1e308}, {"stream": True, "stream_options": {"include_usage": True}},
                                {"temperature": 2, "top_k": 1}, {"stop": ["a"] * 16}, {"n": 1, "model": ""}])
        path, base = self.rng.choice([("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
        return Case(f"{path} {edge}", "ok", path=path, body=dumps(base | edge))

    KINDS = {"chat_field": 30, "completion_field": 10, "message": 10, "raw_body": 10, "huge": 3, "content_type": 5,
             "route": 8, "session": 8, "websocket": 8, "valid": 8}

    def cases(self, n: int) -> list[Case]:
        kinds = self.rng.choices(list(self.KINDS), weights=list(self.KINDS.values()), k=n)
        return [getattr(self, kind)() for kind in kinds]


# ---- sending and classifying -----------------------------------------------------------------------------------


def classify_http(case: Case, r: httpx.Response) -> str:
    if r.status_code >= 500:
        return "server_error"
    if 200 <= r.status_code < 300:
        if case.expect == "error":
            return "accepted_invalid"
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            events = [line for line in r.text.splitlines() if line]
            return "answered" if events[-1:] == ["data: [DONE]"] and '"error"' not in r.text else "broken_stream"
        try:
            r.json()
        except ValueError:
            return "plain_text"
        return "answered"
    try:
        err = r.json()["error"]
        shaped = set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    except (ValueError, KeyError, TypeError):
        return "plain_text"
    if not shaped or not 400 <= r.status_code < 500:
        return "plain_text"
    return "rejected_valid" if case.expect == "ok" else "rejected"


def send_http(client: httpx.Client, case: Case, sid: str) -> tuple[str, str]:
    """(outcome, what came back)."""
    try:
        r = client.request(case.method, case.path.replace("{sid}", sid), content=case.body, headers=case.headers)
    except httpx.TimeoutException:
        return "timeout", ""
    except httpx.TransportError as e:
        return "reset", repr(e)
    if r.headers.get("connection", "").lower() == "close":
        return "connection_closed", f"{r.status_code} {r.text[:200]}"
    return classify_http(case, r), f"{r.status_code} {r.text[:200]}"


def send_ws(url: str, case: Case, sid: str) -> tuple[str, str]:
    """(outcome, the last frame received)."""
    m = {}
    try:
        with connect(url.replace("http", "ws", 1) + case.path.replace("{sid}", sid), open_timeout=TIMEOUT_S) as ws:
            for frame in case.frames:
                ws.send(frame)
                if (m := json.loads(ws.recv(timeout=TIMEOUT_S))).get("type") != "error":
                    return "ws_no_error_frame", str(m)
            ws.send(json.dumps(GOOD_TURN))
            while (m := json.loads(ws.recv(timeout=TIMEOUT_S)))["type"] not in ("done", "error"):
                pass
            return ("ws_ok" if m["type"] == "done" else "ws_turn_failed"), str(m)[:200]
    except TimeoutError:
        return "timeout", str(m)[:200]
    except Exception as e:  # noqa: BLE001 — the socket closed or broke
        return "ws_closed", repr(e)


def wait_idle(url: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = httpx.get(url + "/health", timeout=5).json()
        if (h["active"], h["queued"], h["batch"]) == (0, 0, 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


def fuzz(server: LiveServer, seed: int, n: int) -> tuple[Counter, list]:
    """Send n generated cases; (counts by outcome, [(outcome, case, answer)] of the defects)."""
    cases = Generator(seed, server.service.model_id).cases(n)
    sid = httpx.post(server.url + "/api/sessions", json={"title": "fuzz"}).json()["id"]
    counts, defects = Counter(), []
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
        for case in cases:
            outcome, answer = send_ws(server.url, case, sid) if case.frames else send_http(client, case, sid)
            counts[outcome] += 1
            if outcome not in OUTCOMES_OK:
                defects.append((outcome, case.what[:200], answer))
    return counts, defects


def check(server: LiveServer, seed: int, n: int) -> None:
    counts, defects = fuzz(server, seed, n)
    print(f"\nserver fuzz, seed {seed}: {n} cases: {dict(sorted(counts.items()))}")
    health = wait_idle(server.url)
    assert health["status"] == "ok" and (health["active"], health["queued"], health["batch"]) == (0, 0, 0), health
    assert sum(counts.values()) == n
    assert not defects, f"defects: {json.dumps(defects, indent=1)[:6000]}"


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load(str(TINY), n_ctx=N_CTX), max_batch=4, max_queue=8)
    yield srv
    srv.stop()


def test_server_fuzz_sample(server):
    check(server, seed=0, n=SAMPLE)


@pytest.mark.fuzz
def test_server_fuzz_at_scale(server):
    check(server, seed=1, n=FULL)
