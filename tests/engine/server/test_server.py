"""The server against the official `openai` client and plain HTTP/WebSocket clients, on a live 127.0.0.1 server.

Most tests serve the tiny Qwen3 fixture (fast); the batching test serves SmolLM2: 8 parallel greedy streams must
give exactly the text of 8 sequential runs of LLM.generate (one sequence, no scheduler).
"""
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from websockets.sync.client import connect

import engine
from engine.runtime.runner import DirectRunner
from live_server import LiveServer, ws_turn

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
GREEDY = dict(temperature=0, extra_body={"repeat_penalty": 1.3})
COMPUTE_LOCK = DirectRunner.compute_lock  # held by every forward in the process, the batching runner's too


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=4, max_queue=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def wait_idle(server, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(server.url + "/health").json()
        if h["active"] == 0 and h["queued"] == 0 and h["batch"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"the server did not become idle: {h}")


def test_models_and_health(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == [server.service.model_id]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_stream_equals_non_stream(server, client):
    messages = [{"role": "user", "content": "Tell me something."}]
    full = client.chat.completions.create(model=server.service.model_id, messages=messages, max_tokens=12, **GREEDY)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and full.usage.completion_tokens == 12
    assert full.usage.total_tokens == full.usage.prompt_tokens + 12
    chunks = list(client.chat.completions.create(model=server.service.model_id, messages=messages, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    # the same prompt again: all but the last prompt token come from the pooled cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == chunks[-1].usage.prompt_tokens - 1


def test_sse_wire_format_ends_with_done(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_follow_up_reuses_the_cached_prefix(server, client):
    first = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    a = client.chat.completions.create(model=server.service.model_id, messages=first, max_tokens=6, **GREEDY)
    follow = first + [{"role": "assistant", "content": a.choices[0].message.content},
                      {"role": "user", "content": "Another one."}]
    b = client.chat.completions.create(model=server.service.model_id, messages=follow, max_tokens=6, **GREEDY)
    assert b.usage.prompt_tokens_details.cached_tokens >= a.usage.prompt_tokens - 1


def test_completions_and_stop(server, client):
    llm = server.service.llm
    expected = "".join(llm.generate("Once upon a time", max_tokens=10, repeat_penalty=1.3))
    r = client.completions.create(model=server.service.model_id, prompt="Once upon a time", max_tokens=10, **GREEDY)
    assert r.choices[0].text == expected and r.usage.completion_tokens == 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=server.service.model_id, prompt="Once upon a time", max_tokens=10, stream=True, **GREEDY))
    assert streamed == expected
    stop = expected[3:6]
    r = client.completions.create(model=server.service.model_id, prompt="Once upon a time", max_tokens=10,
                                  stop=[stop], **GREEDY)
    assert r.choices[0].text == expected[:expected.index(stop)] and r.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(server, client):
    kw = dict(model=server.service.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
              temperature=1.0, top_p=0.9, seed=7)
    assert client.chat.completions.create(**kw).choices[0].message.content == \
        client.chat.completions.create(**kw).choices[0].message.content


MSG = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "no-such-model", "messages": MSG}, 404, "model"),
    ({"messages": MSG, "max_tokens": -5}, 400, "max_tokens"),
    ({"messages": MSG, "max_tokens": 10 ** 9}, 400, "max_tokens"),
    ({"messages": MSG, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ({"messages": MSG, "max_tokens": "ten"}, 400, "max_tokens"),
    ({"messages": MSG, "temperature": "hot"}, 400, "temperature"),
    ({"messages": MSG, "top_p": 0}, 400, "top_p"),
    ({"messages": MSG, "stream": "yes"}, 400, "stream"),
    ({"messages": MSG, "stop": [""]}, 400, "stop"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x " * 400}], "max_tokens": 10}, 400, None),  # over the context
])
def test_bad_chat_requests_get_openai_errors(server, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=content,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


@pytest.mark.parametrize("body,param,code", [
    ({"messages": MSG, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"messages": MSG, "top_p": 0}, "top_p", "invalid_value"),
    ({"messages": MSG, "max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ({"messages": MSG, "repeat_last_n": -1}, "repeat_last_n", "invalid_value"),
    ({"messages": MSG, "stop": 5}, "stop", "invalid_type"),
])
def test_sampling_errors_carry_param_and_code(server, body, param, code):
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400 and (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)


def test_models_lists_the_sampling_defaults_requests_start_from(server):
    from dataclasses import asdict
    entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    defaults = server.service.llm.sampling_defaults
    assert entry["sampling_defaults"] == json.loads(json.dumps(asdict(defaults)))
    assert entry["sampling_defaults"]["temperature"] == 0 and entry["sampling_defaults"]["max_tokens"] is None


def test_bad_completions_and_oversized_body(server, client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=server.service.model_id, prompt="", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=3)
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["type"] == "not_found_error"


def test_disconnect_mid_stream_frees_the_slot(server):
    body = {"messages": [{"role": "user", "content": "Talk for a long time."}], "max_tokens": 200, "stream": True,
            "temperature": 0}
    before = server.service.scheduler.steps
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        COMPUTE_LOCK.acquire()  # the scheduler cannot run the next step until the client has gone
    try:
        assert server.service.active == 1
        time.sleep(0.3)
    finally:
        COMPUTE_LOCK.release()
    wait_idle(server)
    assert server.service.scheduler.steps - before < 20  # it stopped at once, not after 200 tokens


def test_overload_is_429_with_retry_after():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=1, max_queue=0)
    try:
        first = threading.Thread(target=httpx.post, args=(srv.url + "/v1/chat/completions",),
                                 kwargs=dict(json={"messages": MSG, "max_tokens": 2}, timeout=30))
        with COMPUTE_LOCK:  # the first request's forward waits, so it holds the only place
            first.start()
            deadline = time.monotonic() + 10
            while srv.service.active < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            busy = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "rate_limit_error"
        first.join()
        wait_idle(srv)
        assert httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}).status_code == 200
    finally:
        srv.stop()


def test_sessions_api_and_websocket(server):
    api = server.url + "/api/sessions"
    s = httpx.post(api, json={"system": "Be brief."}).json()
    sid = s["id"]
    assert s["messages"] == [] and s["system"] == "Be brief."
    ws_url = server.url.replace("http", "ws") + f"/api/sessions/{sid}/ws"
    with connect(ws_url) as ws:
        text, done = ws_turn(ws, {"type": "send", "content": "Hello there", "options": {"max_tokens": 6,
                                                                                        "temperature": 0}})
        assert done["type"] == "done" and done["usage"]["completion_tokens"] == 6 and done["tokens_per_s"] >= 0
        got = httpx.get(f"{api}/{sid}").json()
        assert [m["role"] for m in got["messages"]] == ["user", "assistant"]
        assert got["messages"][1]["content"] == text and got["title"] == "Hello there"
        again, done = ws_turn(ws, {"type": "regenerate", "options": {"max_tokens": 6, "temperature": 0}})
        assert again == text and done["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        # stop: a long answer ends early, cancelled, and keeps what streamed
        ws.send(json.dumps({"type": "send", "content": "More", "options": {"max_tokens": 150, "temperature": 0}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "start"
        assert json.loads(ws.recv(timeout=30))["type"] == "piece"
        ws.send(json.dumps({"type": "stop"}))
        while (m := json.loads(ws.recv(timeout=30)))["type"] != "done":
            pass
        assert m["finish_reason"] == "cancelled" and m["usage"]["completion_tokens"] < 150
    assert httpx.patch(f"{api}/{sid}", json={"title": "Renamed"}).json()["title"] == "Renamed"
    assert [x["title"] for x in httpx.get(api).json()["sessions"] if x["id"] == sid] == ["Renamed"]
    undone = httpx.post(f"{api}/{sid}/undo").json()
    assert undone["removed"] == 2 and [m["content"] for m in undone["messages"]] == ["Hello there", text]
    assert httpx.delete(f"{api}/{sid}").json()["deleted"]
    assert httpx.get(f"{api}/{sid}").status_code == 404
    wait_idle(server)


def test_ui_is_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "markdown.js", "style.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200


def test_favicon_is_an_svg_image(server):
    icon = httpx.get(server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg") and len(icon.content) < 1024


def test_eight_parallel_greedy_streams_equal_sequential_runs(smollm2_gguf):
    """Continuous batching on SmolLM2: 8 concurrent streams share batched forwards (B > 1, BLAS) and still give
    exactly the greedy text of 8 one-at-a-time LLM.generate runs (B = 1, the fused mat-vec)."""
    llm = engine.load(str(smollm2_gguf), n_ctx=512)
    topics = ["cats", "the sea", "Paris", "robots", "music", "winter", "coffee", "trains"]
    prompts = [llm.apply_chat_template([{"role": "user", "content": f"Write two sentences about {t}."}])
               for t in topics]
    sequential = ["".join(llm.generate(llm.encode_chat(p), max_tokens=24)) for p in prompts]
    srv = LiveServer(llm, max_batch=8, max_queue=8)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        out = [None] * 8

        def run(i):
            stream = client.chat.completions.create(
                model=srv.service.model_id, messages=[{"role": "user", "content": f"Write two sentences about "
                                                                                  f"{topics[i]}."}],
                max_tokens=24, temperature=0, stream=True)
            out[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.service.scheduler.max_rows_per_step >= 4  # the streams really ran batched
        assert out == sequential
    finally:
        srv.stop()


# ---- hardening: every request gets an answer ---------------------------------------------------------------------

SURROGATE = '"x\\ud800y"'  # JSON text: a lone surrogate escape inside a string


def post_raw(url: str, text: str, method: str = "POST") -> httpx.Response:
    return httpx.request(method, url, content=text.encode(), headers={"content-type": "application/json"})


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}]}', "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "system", "content": %s}, {"role": "user", "content": "hi"}]}',
     "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}',
     "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "stop": [%s]}', "stop"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "model": %s}', "model"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], %s: 1}', None),
    ("/v1/completions", '{"prompt": %s, "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": [%s], "max_tokens": 2}', "prompt"),
    ("/api/sessions", '{"title": %s}', "title"),
    ("/api/sessions", '{"system": %s}', "system"),
])
def test_lone_surrogates_anywhere_are_400(server, path, body, param):
    err = assert_openai_error(post_raw(server.url + path, body % SURROGATE), 400)
    assert err["code"] == "invalid_unicode" and err["param"] == param
    assert httpx.get(server.url + "/api/sessions").status_code == 200
    wait_idle(server)


def test_session_title_with_a_lone_surrogate_is_refused_and_listing_keeps_working(server):
    sid = httpx.post(server.url + "/api/sessions", json={"title": "ok"}).json()["id"]
    err = assert_openai_error(post_raw(f"{server.url}/api/sessions/{sid}", '{"title": %s}' % SURROGATE, "PATCH"),
                              400)
    assert err["code"] == "invalid_unicode"
    assert [s["title"] for s in httpx.get(server.url + "/api/sessions").json()["sessions"] if s["id"] == sid] == ["ok"]
    httpx.delete(f"{server.url}/api/sessions/{sid}")


@pytest.mark.parametrize("body,param", [
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}', "top_p"),
    ('{"messages": [{"role": "user", "content": "x"}], "repeat_penalty": -Infinity}', "repeat_penalty"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": 1e400}', "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "seed": 18446744073709551616}', "seed"),
    ('{"messages": [{"role": "user", "content": "x"}], "seed": -9223372036854775809}', "seed"),
    ('{"messages": [{"role": "user", "content": "x"}], "min_p": 1}', "min_p"),
    ('{"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"enable_thinking": "yes"}}',
     "chat_template_kwargs"),
    ('{"messages": [{"role": "user", "content": "x"}], "x": ' + "[" * 100 + "]" * 100 + "}", None),
])
def test_non_finite_and_out_of_range_numbers_are_400(server, body, param):
    assert assert_openai_error(post_raw(server.url + "/v1/chat/completions", body), 400)["param"] == param


def test_negative_seed_is_its_64_bit_value(server, client):
    kw = dict(model=server.service.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
              temperature=1.0)
    a = client.chat.completions.create(seed=-1, **kw).choices[0].message.content
    assert a == client.chat.completions.create(seed=(1 << 64) - 1, **kw).choices[0].message.content


@pytest.mark.parametrize("extreme", [dict(temperature=5e-324), dict(temperature=1e-300),
                                     dict(temperature=5e-324, extra_body={"repeat_penalty": 1e-308}),
                                     dict(temperature=0.7, seed=3, extra_body={"repeat_penalty": 1e-308})])
def test_tiny_temperature_and_penalty_give_a_valid_answer(server, client, extreme):
    kw = dict(model=server.service.model_id, messages=[{"role": "user", "content": "Tell me something."}],
              max_tokens=8)
    r = client.chat.completions.create(**kw, **extreme)  # an error answer would raise here
    # with the tiny penalty every seen token with a positive logit ties at float32's maximum, the end-of-turn token
    # among them (it is in the prompt): an empty answer that stops is a valid draw
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) in [("stop", n) for n in range(8)] + [("length", 8)]
    if "extra_body" not in extreme:  # a vanishing temperature is greedy (the tiny penalty makes ties: shared)
        greedy = client.chat.completions.create(**kw, temperature=0)
        assert r.choices[0].message.content == greedy.choices[0].message.content


def test_unexpected_exception_is_an_openai_500_with_request_id_and_keeps_the_connection(server, monkeypatch):
    import http.client

    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(server.service, "api_chat", broken)  # fails on the worker thread, after admission
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    body = json.dumps({"messages": MSG, "max_tokens": 2})
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    payload = json.loads(r.read())
    rid = r.getheader("x-request-id")
    assert r.status == 500 and r.getheader("content-type") == "application/json"
    assert payload["error"]["type"] == "server_error" and set(payload["error"]) == {"message", "type", "param", "code"}
    assert rid and rid in payload["error"]["message"]
    sock = conn.sock
    assert sock is not None  # the server did not close the connection
    monkeypatch.undo()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["choices"][0]["message"]["content"] is not None
    assert conn.sock is sock and r.getheader("x-request-id") not in (None, rid)
    conn.close()
    wait_idle(server)


def test_unexpected_exception_mid_stream_ends_the_stream_with_an_error_event(server, monkeypatch):
    from engine.chat import Chat, Piece

    def broken(self, **sampling):
        yield Piece("a")
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(Chat, "regenerate", broken)
    body = {"messages": MSG, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "a"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and r.headers["x-request-id"] in err["message"]
    wait_idle(server)


def test_websocket_junk_frames_get_error_frames_and_the_socket_stays_usable(server):
    sid = httpx.post(server.url + "/api/sessions", json={}).json()["id"]
    with connect(server.url.replace("http", "ws") + f"/api/sessions/{sid}/ws") as ws:
        for junk in ["not json", b"\x00\x01binary", "[1, 2]", '"text"', "[" * 500 + "]" * 500,
                     '{"type": "send", "content": %s}' % SURROGATE, '{"type": 5}', "{}",
                     '{"type": "send", "content": "hi", "options": {"seed": -1e400}}',
                     '{"type": "send", "content": "hi", "options": {"temperature": "hot"}}']:
            ws.send(junk)
            m = json.loads(ws.recv(timeout=30))
            assert m["type"] == "error" and m["message"] and m["status"] == 400, (junk, m)
        text, done = ws_turn(ws, {"type": "send", "content": "Hello", "options": {"max_tokens": 4,
                                                                                  "temperature": 0}})
        assert done["type"] == "done" and done["usage"]["completion_tokens"] == 4
    httpx.delete(f"{server.url}/api/sessions/{sid}")
    wait_idle(server)


def test_websocket_turn_failing_with_a_non_engine_error_ends_with_an_error_frame(server, monkeypatch):
    from engine.chat import Chat

    def broken(self, text, **sampling):
        raise KeyError("injected")

    sid = httpx.post(server.url + "/api/sessions", json={}).json()["id"]
    monkeypatch.setattr(Chat, "send", broken)
    with connect(server.url.replace("http", "ws") + f"/api/sessions/{sid}/ws") as ws:
        ws.send(json.dumps({"type": "send", "content": "Hello", "options": {"max_tokens": 4}}))
        frames = [json.loads(ws.recv(timeout=30)), json.loads(ws.recv(timeout=30))]
        assert [f["type"] for f in frames] == ["start", "error"] and frames[1]["status"] == 500
        assert "request id" in frames[1]["message"]
        monkeypatch.undo()
        _, done = ws_turn(ws, {"type": "send", "content": "Hello", "options": {"max_tokens": 3, "temperature": 0}})
        assert done["type"] == "done"
    httpx.delete(f"{server.url}/api/sessions/{sid}")
    wait_idle(server)


def open_request(url: str, body: dict):
    """A raw HTTP request left unread on its own socket (close the socket to disconnect)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def wait_for(predicate, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_non_streaming_client_that_disconnects_frees_its_slot(server):
    body = {"messages": [{"role": "user", "content": "Talk for a long time."}], "max_tokens": 200, "temperature": 0}
    before = server.service.scheduler.steps
    with COMPUTE_LOCK:  # the scheduler cannot run a step until the client has gone
        s = open_request(server.url + "/v1/chat/completions", body)
        wait_for(lambda: server.service.active == 1)
        s.close()
        time.sleep(0.3)
    wait_idle(server, timeout=5)
    assert server.service.scheduler.steps - before < 20  # it stopped at once, not after 200 tokens


@pytest.mark.parametrize("stream", [True, False])
def test_queued_client_that_disconnects_leaves_the_queue_at_once(stream):
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=1, max_queue=2)
    try:
        first = threading.Thread(target=httpx.post, args=(srv.url + "/v1/chat/completions",),
                                 kwargs=dict(json={"messages": MSG, "max_tokens": 2}, timeout=30))
        with COMPUTE_LOCK:  # the first request holds the only slot until the lock is released
            first.start()
            wait_for(lambda: srv.service.active == 1)
            s = open_request(srv.url + "/v1/chat/completions", {"messages": MSG, "max_tokens": 50, "stream": stream})
            wait_for(lambda: httpx.get(srv.url + "/health").json()["queued"] == 1)
            s.close()
            wait_for(lambda: httpx.get(srv.url + "/health").json()["queued"] == 0, timeout=5)
            assert srv.service.active == 1  # the slot has not freed: the queue place went with the client
        first.join()
        h = wait_idle(srv)
        assert h["requests"] == 2
    finally:
        srv.stop()


def test_queued_websocket_turn_whose_client_leaves_gives_its_queue_place_back():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=1, max_queue=2)
    try:
        sid = httpx.post(srv.url + "/api/sessions", json={}).json()["id"]
        first = threading.Thread(target=httpx.post, args=(srv.url + "/v1/chat/completions",),
                                 kwargs=dict(json={"messages": MSG, "max_tokens": 2}, timeout=30))
        with COMPUTE_LOCK:
            first.start()
            wait_for(lambda: srv.service.active == 1)
            with connect(srv.url.replace("http", "ws") + f"/api/sessions/{sid}/ws") as ws:
                ws.send(json.dumps({"type": "send", "content": "hi", "options": {"max_tokens": 50}}))
                assert json.loads(ws.recv(timeout=30))["type"] == "start"
                assert srv.service.queued == 1
            wait_for(lambda: srv.service.queued == 0, timeout=5)
            assert srv.service.active == 1
        first.join()
        wait_idle(srv)
        assert [m["role"] for m in httpx.get(f"{srv.url}/api/sessions/{sid}").json()["messages"]] == []
    finally:
        srv.stop()


def test_responses_carry_a_request_id(server):
    ids = {httpx.get(server.url + "/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
