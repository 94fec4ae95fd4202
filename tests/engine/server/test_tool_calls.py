"""Tool calls on a live server through the official `openai` client: tools, tool_choice and parallel_tool_calls as
the SDK sends them, message.tool_calls and streamed delta.tool_calls with finish_reason "tool_calls", and the round
trip call -> tool result -> answer, streamed and not: on the tiny random Qwen3 with Qwen3's real chat template
(required and named choices: the grammar makes its calls valid) and on SmolLM2 (no tools in its template: the
generic JSON syntax). Bad tools, choices and tool messages are 400s naming the field."""
import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

import engine
from live_server import LiveServer
from tool_defs import TOOLS, WEATHER

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
WEATHER_CALL = {"type": "function", "function": {"name": "get_weather"}}


class GetWeather(BaseModel):
    """The weather in a city now."""
    city: str = Field(max_length=24)


@pytest.fixture(scope="module")
def tiny(tiny_qwen3_tools):
    srv = LiveServer(engine.load(str(tiny_qwen3_tools)), max_batch=4)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def smollm2():
    srv = LiveServer(engine.load("smollm2"), max_batch=4)
    yield srv
    srv.stop()


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def streamed(chunks) -> tuple[str, list[dict], str]:
    """(content, tool calls, finish reason) of a stream, its delta.tool_calls accumulated by index as clients do."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or ():
            call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = d.id or call["id"]
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def valid(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, WEATHER if name == "get_weather" else {"type": "object", "maxProperties": 0})
    return args


def test_required_call_round_trip_not_streamed(tiny):
    client = client_of(tiny)
    r = client.chat.completions.create(model=tiny.service.model_id, messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=200, temperature=0, extra_body=NO_THINKING)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    result = {"temp": 21} if call.function.name == "get_weather" else {"time": "12:00"}
    valid(call.function.name, call.function.arguments)
    messages = ASK + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    final = client.chat.completions.create(model=tiny.service.model_id, messages=messages, tools=TOOLS,
                                           max_tokens=16, temperature=0, extra_body=NO_THINKING)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert final.choices[0].message.content or final.choices[0].message.tool_calls
    assert final.usage.prompt_tokens > r.usage.prompt_tokens + 10  # the call and its result were rendered
    assert final.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens - 10  # after the first turn's


def test_named_choice_streamed_matches_not_streamed_and_round_trips(tiny):
    client = client_of(tiny)
    kw = dict(model=tiny.service.model_id, messages=ASK, tools=TOOLS, tool_choice=WEATHER_CALL, max_tokens=120,
              temperature=0, parallel_tool_calls=False, extra_body=NO_THINKING)
    whole = client.chat.completions.create(**kw).choices[0]
    content, calls, finish = streamed(client.chat.completions.create(**kw, stream=True))
    assert content == "" and finish == "tool_calls" == whole.finish_reason and len(calls) == 1
    assert calls[0]["name"] == whole.message.tool_calls[0].function.name == "get_weather"
    assert calls[0]["arguments"] == whole.message.tool_calls[0].function.arguments
    valid("get_weather", calls[0]["arguments"])
    call = {"id": calls[0]["id"], "type": "function",
            "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": call["id"], "content": "21 C, clear"}]
    content, more, finish = streamed(client.chat.completions.create(
        model=tiny.service.model_id, messages=messages, tools=TOOLS, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=NO_THINKING))
    assert finish in ("stop", "length", "tool_calls") and (content or more)


def test_parallel_calls_each_valid_with_their_index(tiny):
    client = client_of(tiny)
    content, calls, finish = streamed(client.chat.completions.create(
        model=tiny.service.model_id, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=150,
        temperature=0.9, seed=5, stream=True, extra_body=NO_THINKING))
    assert calls and finish in ("tool_calls", "length")
    for call in calls:
        valid(call["name"], call["arguments"])
    assert len({c["id"] for c in calls}) == len(calls)


def test_sdk_pydantic_tools_parse_and_stream_helper(tiny):
    client = client_of(tiny)
    kw = dict(model=tiny.service.model_id, messages=ASK, tools=[openai.pydantic_function_tool(GetWeather)],
              tool_choice="required", parallel_tool_calls=False, max_tokens=100, temperature=0, extra_body=NO_THINKING)
    parsed = client.chat.completions.parse(**kw).choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, GetWeather)
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments == parsed
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_renders_no_tools(tiny):
    client = client_of(tiny)
    sizes = [client.chat.completions.create(model=tiny.service.model_id, messages=ASK, tools=TOOLS, tool_choice=c,
                                            max_tokens=4, temperature=0, extra_body=NO_THINKING)
             for c in ("none", "auto")]
    assert all(not r.choices[0].message.tool_calls for r in sizes[:1])
    assert sizes[1].usage.prompt_tokens > sizes[0].usage.prompt_tokens + 200


@pytest.mark.parametrize("extra, param", [
    ({"tools": {"name": "f"}}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [TOOLS[1], TOOLS[1]]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"messages": ASK + [{"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "{not json"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
     "messages[1].tool_calls[0]"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_tool_fields_are_400_naming_them(tiny, extra, param, stream):
    body = {"messages": ASK, "max_tokens": 4, "stream": stream} | extra
    r = httpx.post(tiny.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_smollm2_generic_json_round_trip_streamed_and_not(smollm2):
    """SmolLM2's template has no tools: auto parses whatever it answers; required makes a valid call, whose
    result goes back as a tool message for the final answer."""
    client = client_of(smollm2)
    tools = [TOOLS[0]]
    auto = client.chat.completions.create(model="smollm2", messages=ASK, tools=tools, max_tokens=40, temperature=0)
    assert auto.choices[0].message.content or auto.choices[0].message.tool_calls
    for stream in (False, True):
        kw = dict(model="smollm2", messages=ASK, tools=tools, tool_choice="required", max_tokens=60, temperature=0)
        if stream:
            content, calls, finish = streamed(client.chat.completions.create(**kw, stream=True))
            call = {"id": calls[0]["id"], "type": "function",
                    "function": {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}}
        else:
            choice = client.chat.completions.create(**kw).choices[0]
            finish, call = choice.finish_reason, choice.message.tool_calls[0].model_dump()
        assert finish == "tool_calls" and call["function"]["name"] == "get_weather"
        assert valid("get_weather", call["function"]["arguments"])["city"]
        messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": call["id"], "content": "21 C and sunny"}]
        kw = dict(model="smollm2", messages=messages, tools=tools, max_tokens=30, temperature=0)
        if stream:
            content, calls, finish = streamed(client.chat.completions.create(**kw, stream=True))
        else:
            final = client.chat.completions.create(**kw).choices[0]
            content, calls, finish = final.message.content, final.message.tool_calls, final.finish_reason
        assert finish in ("stop", "length", "tool_calls") and (content or calls)
