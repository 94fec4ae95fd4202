"""GET /metrics (engine/server/metrics.py) on a live server of the tiny Qwen3 fixture: after streamed and plain
requests and bad ones, the Prometheus text parses and its counters equal what the responses reported."""
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import engine
from live_server import LiveServer

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
GREEDY = dict(temperature=0, extra_body={"repeat_penalty": 1.3})
KV_BUDGET = 64 << 20


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=4, max_queue=2, kv_budget=KV_BUDGET)
    yield srv
    srv.stop()


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of GET /metrics, parsed by prometheus_client's own parser."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_made(client, model: str) -> tuple[list, list[int]]:
    """Two chat and two text completions, each streamed and not; their usages and the streams' piece counts."""
    msgs = [{"role": "user", "content": "Tell me something."}]
    usages, pieces = [], []
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, **GREEDY)
    assert r.choices[0].message.content
    usages.append(r.usage)
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, **GREEDY)
    assert r.choices[0].text
    usages.append(r.usage)
    for stream in (client.chat.completions.create(model=model, messages=msgs, max_tokens=8, stream=True,
                                                  stream_options={"include_usage": True}, **GREEDY),
                   client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}, **GREEDY)):
        chunks = list(stream)
        texts = [c.choices[0].delta.content if hasattr(c.choices[0], "delta") else c.choices[0].text
                 for c in chunks if c.choices]
        pieces.append(sum(1 for t in texts if t))
        usages.append(chunks[-1].usage)
    assert all(pieces)
    return usages, pieces


def test_metrics_count_what_the_responses_reported(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    before = scrape(server.url)
    usages, pieces = requests_made(client, server.service.model_id)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.service.model_id, messages=[{"role": "user", "content": "x"}],
                                       top_p=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(server.url + "/no/such/path").status_code == 404
    m = scrape(server.url)

    def delta(name, **labels):
        return value(m, name, **labels) - value(before, name, **labels)

    assert delta("engine_http_requests_total", endpoint="/v1/chat/completions", status="200") == 2
    assert delta("engine_http_requests_total", endpoint="/v1/completions", status="200") == 2
    assert delta("engine_http_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert delta("engine_http_requests_total", endpoint="/v1/chat/completions", status="404") == 1
    assert delta("engine_http_requests_total", endpoint="other", status="404") == 1
    assert delta("engine_errors_total", type="invalid_request_error", code=bad.value.code) == 1
    assert delta("engine_errors_total", type="invalid_request_error", code="model_not_found") == 1
    assert delta("engine_errors_total", type="not_found_error", code="") == 1

    assert delta("engine_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("engine_generation_tokens_total") == sum(u.completion_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details)
    assert delta("engine_prompt_tokens_cached_total") == cached > 0  # the second chat reuses the first's prefix
    assert delta("engine_generations_total", finish_reason="length") == 4
    assert delta("engine_time_to_first_token_seconds_count") == 4  # one per completion
    assert delta("engine_time_to_first_token_seconds_sum") > 0
    itl = delta("engine_inter_token_latency_seconds_count")
    assert sum(n - 1 for n in pieces) <= itl <= sum(u.completion_tokens - 1 for u in usages)


def test_gauges_and_batch_sizes_are_read_at_scrape_time(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model=server.service.model_id, max_tokens=4, **GREEDY,
                                   messages=[{"role": "user", "content": "Hi"}])
    m = scrape(server.url)
    assert value(m, "engine_requests_running") == 0 and value(m, "engine_requests_waiting") == 0
    assert value(m, "engine_batch_sequences") == 0
    assert value(m, "engine_kv_cache_budget_bytes") == KV_BUDGET
    assert value(m, "engine_kv_cache_bytes") == server.service.store.used_bytes > 0  # the pooled chat caches
    runner = server.service.scheduler
    assert value(m, "engine_scheduler_steps_total") == runner.steps == value(m, "engine_batch_size_count")
    assert value(m, "engine_scheduler_rows_total") == runner.rows
    assert value(m, "engine_batch_size_bucket", le="+Inf") == runner.steps
    assert value(m, "engine_batch_size_sum") == sum(k * n for k, n in runner.step_sizes.items())
    assert value(m, "engine_batch_size_bucket", le="1.0") == runner.step_sizes[1] > 0  # one request at a time


def test_two_apps_in_one_process_keep_their_own_metrics(server):
    other = LiveServer(server.service.llm, max_batch=1, max_queue=0)
    try:
        httpx.get(other.url + "/v1/models")
        httpx.get(other.url + "/v1/models")
        mine, theirs = scrape(server.url), scrape(other.url)
        assert value(theirs, "engine_http_requests_total", endpoint="/v1/models", status="200") == 2
        assert value(mine, "engine_http_requests_total", endpoint="/v1/models", status="200") == 0
        assert value(theirs, "engine_kv_cache_budget_bytes") == 1 << 30
    finally:
        other.stop()


def test_unexpected_failures_count_as_server_errors(server, monkeypatch):
    from engine.chat import Chat, Piece

    def failing(*args, **kwargs):
        raise ZeroDivisionError("injected")

    def broken(self, **sampling):
        yield Piece("a")
        raise ZeroDivisionError("injected")

    before = scrape(server.url)
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    monkeypatch.setattr(server.service, "api_chat", failing)  # fails before the answer starts: a 500
    assert httpx.post(server.url + "/v1/chat/completions", json=body).status_code == 500
    monkeypatch.undo()
    monkeypatch.setattr(Chat, "regenerate", broken)  # fails once the stream has started: an error event
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body | {"stream": True}) as r:
        assert '"server_error"' in r.read().decode()
    m = scrape(server.url)
    assert value(m, "engine_errors_total", type="server_error", code="") - value(
        before, "engine_errors_total", type="server_error", code="") == 2
    assert value(m, "engine_http_requests_total", endpoint="/v1/chat/completions", status="500") == 1
