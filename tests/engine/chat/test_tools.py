"""engine.chat.tools and tool calls in a Chat: the checks of tools / tool_choice, the real Qwen3 chat template
rendering tools, calls and results as transformers does, the grammar of a required or named choice over real
vocabularies (Qwen3's <tool_call> an added text token, Mistral's [TOOL_CALLS] a control token), and round trips
(call -> tool result -> answer) on the tiny random Qwen3 (the grammar makes its calls valid) and on SmolLM2
(the generic JSON format of a template without tools)."""
import json
import shutil
from pathlib import Path

import jsonschema
import llguidance
import pytest

import engine
from engine.chat.thinking import ThinkSplitter
from engine.chat.tools import (ToolChoice, ToolSplitter, call_grammar, call_parser, check_tool_choice, check_tools,
                               template_view)
from engine.errors import InvalidRequestError
from engine.runtime import structured
from engine.text.template import ChatTemplate
from engine.text.tokenizer import StreamDecoder, Tokenizer
from engine.text.toolcalls import detect_format
from tool_defs import TOOLS, WEATHER

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": "", "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]


# -- checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tools, param", [
    ("get_weather", "tools"),
    ([{"type": "function"}], "tools[0].function"),
    ([{"function": {"name": "f"}}], "tools[0]"),
    ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
    ([TOOLS[1], TOOLS[1]], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description"),
])
def test_bad_tools_name_the_field(tools, param):
    with pytest.raises(InvalidRequestError) as e:
        check_tools(tools)
    assert e.value.param == param


@pytest.mark.parametrize("choice, parallel, tools, param", [
    ("required", None, None, "tool_choice"),
    ("sometimes", None, TOOLS, "tool_choice"),
    ({"type": "function", "function": {"name": "rm_rf"}}, None, TOOLS, "tool_choice"),
    ({"type": "function"}, None, TOOLS, "tool_choice"),
    ("auto", "yes", TOOLS, "parallel_tool_calls"),
])
def test_bad_tool_choices_name_the_field(choice, parallel, tools, param):
    with pytest.raises(InvalidRequestError) as e:
        check_tool_choice(choice, parallel, check_tools(tools))
    assert e.value.param == param


def test_choices_and_normalized_tools():
    tools = check_tools(TOOLS)
    assert tools[1] == {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
    assert check_tools([]) is None and check_tools(None) is None
    assert check_tool_choice(None, None, tools) == ToolChoice("auto", None, True)
    assert check_tool_choice("none", False, None) == ToolChoice("none", None, False)
    named = check_tool_choice({"type": "function", "function": {"name": "get_time"}}, None, tools)
    assert named == ToolChoice("function", "get_time", True) and named.constrained


# -- the real Qwen3 template -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_template(qwen3_tokenizer_dir):
    return ChatTemplate.from_sources(tokenizer_dir=qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    return Tokenizer.from_file(qwen3_tokenizer_dir / "tokenizer.json")


def test_qwen3_template_renders_tools_calls_and_results_as_transformers_does(qwen3_template, qwen3_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    messages, tools = template_view(HISTORY, check_tools(TOOLS), qwen3_template.source)
    ours = qwen3_template.render(messages, True, tools=tools)
    reference = transformers.AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir))
    theirs = reference.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    assert detect_format(qwen3_template.source) == "hermes"
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in ours
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
            '"celsius"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n'
            '</tool_response><|im_end|>\n<|im_start|>assistant\n') in ours


def test_a_template_without_tools_gets_them_in_the_system_message_and_calls_as_json():
    source = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    messages, tools = template_view(HISTORY, check_tools(TOOLS), source)
    assert tools is None and messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_time"' in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris",
                                                                                     "unit": "celsius"}}
    assert messages[3] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}
    assert template_view(HISTORY[1:2], check_tools(TOOLS), source)[0][0]["role"] == "system"


# -- grammars over real vocabularies -----------------------------------------------------------------------------


def accepts(tokenizer, grammar, ids) -> tuple[bool, bool]:
    """(every token accepted, the grammar then accepts the end) for token ids fed to a matcher of grammar."""
    matcher = llguidance.LLMatcher(structured.vocabulary(tokenizer), grammar.grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ok = all(matcher.consume_token(i) and not matcher.is_error() for i in ids)
    return ok, ok and matcher.is_accepting()


def test_qwen3_grammar_is_what_the_template_renders_back(qwen3_tokenizer, qwen3_template):
    tok, tools = qwen3_tokenizer, check_tools(TOOLS)
    ids = tok.encode("<tool_call>", add_special=False)
    assert len(ids) == 1 and not tok.is_special(ids[0])  # an added token of plain text: decoded as text
    decoder = StreamDecoder(tok, continuation=True)
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "<tool_call>"
    rendered = qwen3_template.render(template_view(HISTORY, tools, qwen3_template.source)[0], False)
    call = rendered.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    required = call_grammar("hermes", tools, ToolChoice("required", None, False), tok, qwen3_template.source)
    assert accepts(tok, required, tok.encode(call, add_special=False)) == (True, True)
    named = call_grammar("hermes", tools, ToolChoice("function", "get_time"), tok, qwen3_template.source)
    assert accepts(tok, named, tok.encode(call, add_special=False))[0] is False
    time_call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert accepts(tok, named, tok.encode(f"{time_call}\n{time_call}", add_special=False)) == (True, True)
    thinking = call_grammar("hermes", tools, ToolChoice("required"), tok, qwen3_template.source, "optional")
    assert accepts(tok, thinking, tok.encode(f"<think>\nI need the time.\n</think>\n\n{time_call}",
                                             add_special=False)) == (True, True)
    assert accepts(tok, thinking, tok.encode("The time is", add_special=False))[0] is False


def mistral_tokenizer(tmp_path) -> Tokenizer:
    """The tiny Mistral fixture's tokenizer with [TOOL_CALLS] and [ARGS] added as control tokens, as Mistral's
    own tokenizers have them."""
    data = json.loads((TINY / "mistral" / "hf" / "tokenizer.json").read_text())
    n = len(data["model"]["vocab"]) + len(data["added_tokens"])
    for i, text in enumerate(("[TOOL_CALLS]", "[ARGS]")):
        data["added_tokens"].append({"id": n + i, "content": text, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    for name in ("tokenizer_config.json", "config.json"):
        shutil.copy(TINY / "mistral" / "hf" / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"vocab_size": n + 2}))
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    return Tokenizer.from_file(tmp_path / "tokenizer.json")


@pytest.mark.parametrize("source, text", [
    ("[TOOL_CALLS]", '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]'),
    ("[TOOL_CALLS] [ARGS]", '[TOOL_CALLS]get_weather[ARGS]{"city": "Rome", "unit": "celsius"}[TOOL_CALLS]get_time'
                            '[ARGS]{}'),
])
def test_mistral_control_token_marker_is_generated_decoded_and_parsed(tmp_path, source, text):
    tok, tools = mistral_tokenizer(tmp_path), check_tools(TOOLS)
    ids = tok.encode(text, add_special=False)
    assert tok.is_special(ids[0]) and tok.decode(ids[:1]) == "[TOOL_CALLS]"
    grammar = call_grammar("mistral", tools, ToolChoice("required"), tok, source)
    assert f"<[{ids[0]}]>" in grammar.grammar  # a control token is written as such, never spelled out
    assert accepts(tok, grammar, ids) == (True, True)
    decoder = StreamDecoder(tok, continuation=True)  # what stream_text gives the parser: control tokens as text
    decoded = "".join(decoder.push(i) for i in ids) + decoder.flush()
    parser = call_parser("mistral", tools, ToolChoice())
    events = parser.feed(decoded) + parser.finish()
    assert [e[1].name for e in events if e[0] == "tool_call"] == (["get_time"] if "ARGS" not in source
                                                                   else ["get_weather", "get_time"])
    assert all(len(e[1].id) == 9 and e[1].id.isalnum() for e in events)  # Mistral's templates want 9 characters


@pytest.mark.parametrize("fmt, text", [
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}; '
               '{"name": "get_time", "parameters": {}}'),
    ("json", '[{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]'),
])
def test_llama3_and_json_grammars(fmt, text, smollm2_tokenizer):
    grammar = call_grammar(fmt, check_tools(TOOLS), ToolChoice("required"), smollm2_tokenizer)
    assert accepts(smollm2_tokenizer, grammar, smollm2_tokenizer.encode(text, add_special=False)) == (True, True)
    single = call_grammar(fmt, check_tools(TOOLS), ToolChoice("required", None, False), smollm2_tokenizer)
    assert accepts(smollm2_tokenizer, single, smollm2_tokenizer.encode(text, add_special=False))[0] is False


def test_a_schema_that_cannot_be_compiled_names_tools(smollm2_tokenizer):
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "array", "uniqueItems": True}}, "required": ["x"]}}}]
    with pytest.raises(InvalidRequestError) as e:
        call_grammar("json", check_tools(bad), ToolChoice("required"), smollm2_tokenizer)
    assert e.value.param == "tools" and "uniqueItems" in str(e.value)


def test_splitter_keeps_reasoning_and_content_apart_from_calls_in_any_chunking():
    text = ('<think>\nLet me look.\n</think>\n\nChecking.<tool_call>\n{"name": "get_time", "arguments": {}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    for chunk in (1, 4, len(text)):
        for parallel in (True, False):
            splitter = ToolSplitter(ThinkSplitter(), call_parser("hermes", check_tools(TOOLS), ToolChoice()),
                                    parallel)
            pieces = []
            for i in range(0, len(text), chunk):
                pieces += splitter.feed(text[i:i + chunk])
                if splitter.done:
                    break
            pieces += splitter.flush()
            assert "".join(p.text for p in pieces if p.kind == "reasoning") == "Let me look.\n"
            assert "".join(p.text for p in pieces if p.kind == "content").strip() == "Checking."
            calls = [(p.index, p.tool_call.name) for p in pieces if p.kind == "tool_call"]
            assert calls == ([(0, "get_time"), (1, "get_weather")] if parallel else [(0, "get_time")])


# -- Chat ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm(tiny_qwen3_tools):
    return engine.load(str(tiny_qwen3_tools))


def test_required_and_named_choices_make_the_random_model_call_validly(tiny_llm):
    for choice, name in (("required", None), ({"type": "function", "function": {"name": "get_weather"}},
                                              "get_weather")):
        for seed in range(3):
            chat = tiny_llm.chat(enable_thinking=False)
            pieces = list(chat.send("Weather in Paris?", tools=TOOLS, tool_choice=choice, parallel_tool_calls=False,
                                    max_tokens=200, temperature=1.0, seed=seed))
            calls = [p.tool_call for p in pieces if p.kind == "tool_call"]
            assert len(calls) == 1 and [p.kind for p in pieces] == ["tool_call"]
            assert calls[0].name in ("get_weather", "get_time") and (name is None or calls[0].name == name)
            schema = WEATHER if calls[0].name == "get_weather" else {"type": "object", "maxProperties": 0}
            jsonschema.validate(json.loads(calls[0].arguments), schema)
            assert chat.last_usage.finish_reason == "tool_calls"
            assert chat.messages[-1] == {"role": "assistant", "content": "", "tool_calls": [calls[0].to_openai()]}


def test_round_trip_call_result_answer_in_python(tiny_llm, tmp_path):
    chat = tiny_llm.chat(enable_thinking=False)
    pieces = list(chat.send("Weather in Paris?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                            max_tokens=200, temperature=0))
    call = pieces[0].tool_call
    answer = list(chat.send_tool_results({call.id: {"temp": 21, "sky": "clear"}}, max_tokens=12, temperature=0))
    assert answer and all(p.kind == "content" for p in answer) and chat.tools == check_tools(TOOLS)
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "assistant"]
    assert chat.messages[2] == {"role": "tool", "tool_call_id": call.id, "name": call.name,
                                "content": '{"temp": 21, "sky": "clear"}'}
    assert chat.messages[3]["content"] == "".join(p.text for p in answer)
    prompt = chat.render(False)
    assert '<tool_response>\n{"temp": 21, "sky": "clear"}\n</tool_response>' in prompt
    assert f'<tool_call>\n{{"name": "{call.name}", "arguments": {call.arguments}}}\n</tool_call>' in prompt
    assert chat.last_usage.cached_tokens >= len(tiny_llm.encode_chat(chat._render(chat.messages[:1], False)))
    chat.save(tmp_path / "chat.json")
    loaded = type(chat).load(tmp_path / "chat.json", tiny_llm)
    assert loaded.messages == chat.messages and loaded.tools == chat.tools and loaded.render(False) == prompt
    regenerated = list(chat.regenerate(max_tokens=12, temperature=0))
    assert "".join(p.text for p in regenerated) == chat.messages[3]["content"] and len(chat.messages) == 4
    chat.undo()
    assert chat.messages == []


def test_tool_choice_none_hides_the_tools_and_auto_parses_what_comes(tiny_llm):
    chat = tiny_llm.chat(enable_thinking=False)
    list(chat.send("Hi", tools=TOOLS, tool_choice="none", max_tokens=4, temperature=0))
    without = chat.last_usage.prompt_tokens
    assert all(p.kind == "content" for p in chat.regenerate(tool_choice="auto", max_tokens=30, temperature=0))
    assert chat.last_usage.prompt_tokens > without + 200  # the tools' system prompt
    with pytest.raises(InvalidRequestError) as e:
        chat.send("Hi", tool_choice="required", response_format={"type": "json_object"})
    assert e.value.param == "tool_choice"
    with pytest.raises(InvalidRequestError, match="the last answer called no tool"):
        chat.send_tool_results({"call_x": "1"})


def test_smollm2_generic_json_round_trip():
    """SmolLM2's template renders no tools: they go in the system message, the generic JSON syntax is parsed (auto:
    whatever it answers) and required makes its answer a valid call, whose result it then answers."""
    llm = engine.load()
    tools = [TOOLS[0]]
    chat = llm.chat()
    auto = list(chat.send("What is the weather in Paris?", tools=tools, max_tokens=40, temperature=0))
    assert {p.kind for p in auto} <= {"content", "tool_call"} and "get_weather" in chat.render(False)
    chat = llm.chat()
    call = [p for p in chat.send("What is the weather in Paris?", tools=tools, tool_choice="required",
                                  max_tokens=60, temperature=0)]
    assert [p.kind for p in call] == ["tool_call"] and chat.last_usage.finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call[0].tool_call.arguments), WEATHER)
    answer = "".join(p.text for p in chat.send_tool_results({call[0].tool_call.id: "21 C, sunny"}, max_tokens=20,
                                                            temperature=0))
    assert answer and "<|im_start|>tool\n21 C, sunny<|im_end|>" in chat.render(False)
