"""engine.text.toolcalls: every family's tool-call syntax into OpenAI's shape, streamed in any chunking; text
that does not parse stays content."""
import itertools
import json

import pytest

from engine.text.toolcalls import ToolCallParser, detect_format

WEATHER = {"city": "Paris", "unit": "celsius"}


def run(fmt: str, text: str, chunk: int | None = None, names=("get_weather", "get_time")) -> list[tuple]:
    """Events of text fed in chunks of `chunk` characters (None: whole), adjacent content merged."""
    ids = (f"call_{i}" for i in itertools.count())
    parser = ToolCallParser(fmt, names, make_id=lambda: next(ids))
    pieces = [text] if chunk is None else [text[i:i + chunk] for i in range(0, len(text), chunk)]
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    merged = []
    for kind, value in events:
        if kind == "content" and merged and merged[-1][0] == "content":
            merged[-1] = ("content", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return merged


def calls(events) -> list[tuple[str, dict]]:
    return [(v.name, json.loads(v.arguments)) for k, v in events if k == "tool_call"]


CASES = [
    ("hermes", 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
               '</tool_call>', "Let me check.", [("get_weather", WEATHER)]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>\n'
               '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>', "\n",
     [("get_weather", WEATHER), ("get_time", {})]),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}', "", [("get_time", {"tz": "UTC"})]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]', "",
     [("get_weather", WEATHER)]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]get_time[ARGS]{}', "",
     [("get_weather", WEATHER), ("get_time", {})]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "",
     [("get_weather", WEATHER)]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
               '{"name": "get_time", "parameters": {"tz": "a;b"}}', "",
     [("get_weather", WEATHER), ("get_time", {"tz": "a;b"})]),
    ("json", '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n```', "",
     [("get_weather", WEATHER)]),
    ("json", '{"tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}}]}',
     "", [("get_time", {"tz": "UTC"})]),
    ("json", '[{"name": "get_time", "parameters": {}}]', "", [("get_time", {})]),
]


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
@pytest.mark.parametrize("fmt, text, content, expected", CASES)
def test_calls_are_parsed_in_any_chunking(fmt, text, content, expected, chunk):
    events = run(fmt, text, chunk)
    assert calls(events) == expected
    assert "".join(v for k, v in events if k == "content") == content


@pytest.mark.parametrize("fmt, text", [
    ("hermes", "The answer is 4, no tool needed."),
    ("hermes", "A tag <tool_cal is not a call, nor is <tool_call>{broken json</tool_call>."),
    ("hermes", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),      # not an offered tool
    ("llama3", "Paris is sunny today."),
    ("llama3", '{"name": "get_weather", "parameters": "not an object"}'),
    ("json", "{not json at all"),
    ("json", 'Sure: {"name": "get_time", "arguments": {}}'),                       # a call must be the whole answer
    ("mistral", "[TOOL_CALLS]get_weather{no args marker}"),
])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_text_that_is_not_a_call_stays_content(fmt, text, chunk):
    assert run(fmt, text, chunk) == [("content", text)]


def test_content_streams_as_it_comes_and_only_a_possible_tag_is_held():
    parser = ToolCallParser("hermes", ["get_time"])
    assert parser.feed("Hello <tool") == [("content", "Hello ")]
    assert parser.feed("box>") == [("content", "<toolbox>")]
    llama = ToolCallParser("llama3", ["get_time"])
    assert llama.feed("  ") == [] and llama.feed("Hi") == [("content", "  Hi")]
    assert llama.feed(' {"x": 1}') == [("content", ' {"x": 1}')]  # content once begun stays content


def test_any_name_when_no_tools_are_given_and_openai_shape():
    parser = ToolCallParser("hermes", None, make_id=lambda: "call_1")
    events = parser.feed('<tool_call>{"name": "anything", "arguments": {"a": "é"}}</tool_call>') + parser.finish()
    assert events[0][1].to_openai() == {"id": "call_1", "type": "function",
                                        "function": {"name": "anything", "arguments": '{"a": "é"}'}}


def test_ids_are_unique_openai_style():
    parser = ToolCallParser("json", None)
    events = parser.feed('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]') + parser.finish()
    ids = [v.id for _, v in events]
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) == 29 for i in ids)


@pytest.mark.parametrize("source, fmt", [
    ("{% for tool in tools %}...<tool_call>\n{{ tool }}</tool_call>{% endfor %}", "hermes"),
    ("{{ '[AVAILABLE_TOOLS]' }}...[TOOL_CALLS]", "mistral"),
    ('<|start_header_id|>...{"name": function name, "parameters": dictionary}<|eot_id|>', "llama3"),
    ("{{ '<|python_tag|>' }}", "llama3"),
    ("{{ messages }}", "json"),
    (None, "json"),
])
def test_format_follows_the_chat_template(source, fmt):
    assert detect_format(source) == fmt


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown tool-call format"):
        ToolCallParser("xml")
