"""Structured outputs on a live server serving SmolLM2, through the official `openai` client: response_format as the
SDK sends it (json_schema, json_object, `client.chat.completions.parse` / `.stream` with a Pydantic model), on chat
and completions, streamed or not, several at once in the batch; the regex and grammar extras; and a schema or
grammar that cannot be compiled answered with a 400 naming response_format, streamed or not."""
import json
import re
import threading

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

import engine
from bench.json_schemas import SCHEMAS
from live_server import LiveServer

GBNF = 'root ::= answer " because " reason\nanswer ::= "yes" | "no"\nreason ::= [a-z ]{5,40} "."'


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name][1], "strict": True}}


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load("smollm2"), max_batch=4, max_queue=4)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def ask(name: str) -> list[dict]:
    return [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": SCHEMAS[name][0]}]


def test_json_schema_chat_streamed_or_not(server, client):
    for name in ("nested_object", "ref_defs"):
        full = client.chat.completions.create(model=server.service.model_id, messages=ask(name), max_tokens=300,
                                              temperature=0, response_format=schema_format(name))
        choice = full.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name][1])
        chunks = client.chat.completions.create(model=server.service.model_id, messages=ask(name), max_tokens=300,
                                                temperature=0, response_format=schema_format(name), stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content


def test_sampled_json_object_and_completions(server, client):
    r = client.chat.completions.create(model=server.service.model_id, max_tokens=300, temperature=0.8, seed=3,
                                       messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    body = {"prompt": "A person, as JSON:", "max_tokens": 200, "temperature": 0,
            "response_format": schema_format("person")}
    text = client.completions.create(model=server.service.model_id, prompt=body["prompt"], max_tokens=200,
                                     temperature=0, extra_body={"response_format": schema_format("person")})
    jsonschema.validate(json.loads(text.choices[0].text), SCHEMAS["person"][1])
    events = httpx.post(server.url + "/v1/completions", json=body | {"stream": True}, timeout=60).text
    streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in events.splitlines()
                       if line.startswith("data: {"))
    assert streamed == text.choices[0].text


def test_parse_and_stream_with_a_pydantic_model(server, client):
    messages = [{"role": "user", "content": "Make up a person with a name and an age."}]
    r = client.chat.completions.parse(model=server.service.model_id, messages=messages, max_tokens=200,
                                      temperature=0, response_format=Person)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Person) and r.choices[0].finish_reason == "stop"
    with client.chat.completions.stream(model=server.service.model_id, messages=messages, max_tokens=200,
                                        temperature=0, response_format=Person) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == parsed


def test_regex_and_grammar_extras(server, client):
    for fmt, pattern in (({"type": "regex", "regex": r"(yes|no), [a-z]{2,12}\."}, r"(yes|no), [a-z]{2,12}\."),
                         ({"type": "grammar", "grammar": GBNF}, r"(yes|no) because [a-z ]{5,40}\.")):
        r = client.chat.completions.create(model=server.service.model_id, max_tokens=60, temperature=0,
                                           messages=[{"role": "user", "content": "Is the sky blue?"}],
                                           response_format=fmt)
        assert re.fullmatch(pattern, r.choices[0].message.content)


def test_constrained_requests_share_the_batch(server, client):
    names = ["person", "enum", "number_ranges", "string_array"]
    texts = [None] * len(names)

    def work(i):
        r = client.chat.completions.create(model=server.service.model_id, messages=ask(names[i]), max_tokens=200,
                                           temperature=0.7, seed=i, response_format=schema_format(names[i]))
        texts[i] = r.choices[0].message.content

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for name, text in zip(names, texts):
        jsonschema.validate(json.loads(text), SCHEMAS[name][1])
    assert server.service.scheduler.max_rows_per_step > 1


@pytest.mark.parametrize("fmt, fragment", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}, "Invalid type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     "uniqueItems"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema"),
    ({"type": "regex", "regex": "(("}, "unclosed group"),
    ({"type": "grammar", "grammar": "root ::= missing"}, "cannot be compiled"),
    ({"type": "grammar", "grammar": 'start: "a" <|nope|>', "syntax": "lark"}, "unknown special token"),  # vocabulary
    ({"type": "yaml"}, "'type' is one of"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_uncompilable_formats_are_400(server, client, fmt, fragment, stream):
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(model=server.service.model_id, max_tokens=20, response_format=fmt,
                                           messages=[{"role": "user", "content": "Hi"}], stream=stream)
        list(r) if stream else None
    assert e.value.status_code == 400 and fragment in e.value.message
    assert e.value.body["param"] == "response_format"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "response_format": fmt,
                                                         "stream": stream})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
