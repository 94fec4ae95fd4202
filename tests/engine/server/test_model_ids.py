"""The ids a server answers to (what it was started with, the resolved registry id, its aliases) and
--max-tokens-default: a request without max_tokens gets min(N, the rest of the context)."""
from pathlib import Path

import httpx
import openai
import pytest

import engine
from engine.formats import hub
from engine.server.service import served_ids
from live_server import LiveServer
from serve_process import start_serve

ROOT = Path(__file__).parents[3]
TINY = ROOT / "tests" / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
GREEDY = dict(temperature=0, extra_body={"repeat_penalty": 1.3})


def test_served_ids_are_the_resolved_id_what_was_typed_and_the_registry_aliases():
    reg = hub.default_registry()
    default, other = reg.get("smollm2"), reg.get("smollm2.135m_base")
    assert default.default and not other.default
    assert served_ids(hub.ModelSource(id=default.id, spec=default), "smollm2") == ["smollm2.135m_q4", "smollm2"]
    assert served_ids(hub.ModelSource(id=default.id, spec=default), "smollm2.135m_q4") == ["smollm2.135m_q4",
                                                                                          "smollm2"]
    assert served_ids(hub.ModelSource(id=default.id, spec=default), None) == ["smollm2.135m_q4", "smollm2"]
    assert served_ids(hub.ModelSource(id=other.id, spec=other), "SmolLM2.135m_base") == ["smollm2.135m_base",
                                                                                        "SmolLM2.135m_base"]
    assert served_ids(hub.ModelSource(id="/m/x.gguf"), "x.gguf") == ["/m/x.gguf", "x.gguf"]


@pytest.fixture(scope="module")
def capped():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256), max_batch=2, max_queue=2, max_tokens_default=5)
    yield srv
    srv.stop()


def test_a_request_without_max_tokens_gets_the_server_default(capped):
    client = openai.OpenAI(base_url=capped.url + "/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model=capped.service.model_id, messages=[{"role": "user", "content": "Hi"}],
                                       **GREEDY)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model=capped.service.model_id, prompt="Once upon a time", stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert chunks[-1].usage.completion_tokens == 5
    assert httpx.get(capped.url + "/v1/models").json()["data"][0]["max_tokens_default"] == 5


def test_an_explicit_max_tokens_is_honoured_past_the_default(capped):
    client = openai.OpenAI(base_url=capped.url + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model=capped.service.model_id, prompt="Once upon a time", max_tokens=9, **GREEDY)
    assert r.usage.completion_tokens == 9 and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:  # past the context: an error, as OpenAI answers
        client.completions.create(model=capped.service.model_id, prompt=[7] * 250, max_tokens=9, **GREEDY)
    assert e.value.code == "context_length_exceeded"


def test_the_default_is_at_most_the_rest_of_the_context(capped):
    client = openai.OpenAI(base_url=capped.url + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model=capped.service.model_id, prompt=[7] * 253, **GREEDY)  # 3 positions left
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_serve_answers_to_the_id_it_was_started_with_and_its_aliases(smollm2_gguf):
    """python -m engine.serve --model smollm2: every listed id works with the official client, others are 404."""
    p, url = start_serve("--model", "smollm2", "--threads", "1", "--device", "cpu", "--ctx-size", "512",
                         "--max-tokens-default", "3")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        models = client.models.list().data
        assert [(m.id, m.object, m.owned_by) for m in models] == [("smollm2.135m_q4", "model", "engine"),
                                                                  ("smollm2", "model", "engine")]
        for m in models:
            r = client.chat.completions.create(model=m.id, messages=[{"role": "user", "content": "Hi"}], seed=1)
            assert r.model == "smollm2.135m_q4" and 1 <= r.usage.completion_tokens <= 3
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="smollm2.135m_base", messages=[{"role": "user", "content": "Hi"}])
        assert e.value.code == "model_not_found" and e.value.body["param"] == "model"
        assert set(e.value.response.json()["error"]) == {"message", "type", "param", "code"}
    finally:
        p.kill()
        p.wait()
