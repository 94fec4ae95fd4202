"""Tool calls in a conversation (OpenAI's function calling): the offered tools and the tool choice, checked; the
conversation as the chat template sees it (the tools, assistant messages' `tool_calls`, `tool` results); the parser of
the model's calls; and, for a "required" or named choice, the grammar (engine.runtime.structured) that makes the answer
a valid call whatever the model.

- tools: OpenAI's list, [{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}]; names
  unique, [a-zA-Z0-9_-]{1,64}; parameters a JSON schema of an object (left out: the function takes no arguments).
- tool_choice: "auto" (the model decides; its calls are parsed), "none" (the tools are not rendered and nothing is
  parsed: the answer is text; calls and results already in the conversation still are), "required" (one call or
  more), {"type": "function", "function": {"name"}} (that function). parallel_tool_calls false: one call at most.
- The call syntax is the chat template's (engine.text.toolcalls.detect_format: hermes `<tool_call>`, Mistral
  `[TOOL_CALLS]`, Llama 3 JSON with "parameters", else the generic JSON object). A template that renders no tools
  (no `tools` in its source, e.g. SmolLM2's) gets them in the system message with the generic JSON syntax, and its
  assistant messages show their calls as that JSON (when it renders no `tool_calls` either).
- The grammar writes JSON as json.dumps does (", " and ": "), as the templates render calls back, so the next turn's
  prompt repeats the answer's tokens and the KV cache is reused past it. A thinking template (`<think>` in its
  source, enable_thinking not false) may reason before the calls.
"""
from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass

from engine.chat.thinking import Piece, ThinkSplitter
from engine.errors import InvalidRequestError
from engine.runtime import structured
from engine.text.toolcalls import ToolCallParser, new_call_id

__all__ = ["ToolChoice", "ToolSplitter", "check_tools", "check_tool_choice", "template_view", "call_parser",
           "call_grammar"]

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MODES = ("auto", "none", "required")
TOOLS_PROMPT = ("You can call functions. Their signatures, as JSON:\n{tools}\n\nTo call a function, answer with "
                'nothing but a JSON object {{"name": <function name>, "arguments": <arguments object>}} (a list of '
                "them for several calls); its result comes back in a tool message.")
_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}  # json.dumps' layout
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ToolChoice:
    """How a turn may use the tools: mode "auto", "none", "required" or "function" (then name: the function);
    parallel False: one call at most."""
    mode: str = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def constrained(self) -> bool:
        """The answer must be a call (required, or a named function): a grammar makes it one."""
        return self.mode in ("required", "function")


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _check_function(f, where: str, seen: set) -> dict:
    """A tool's "function" object, checked; its known fields only."""
    if not isinstance(f, dict):
        raise _bad(where, f"'{where}' must be an object like {{\"name\": \"get_weather\", \"parameters\": {{...}}}}",
                   "invalid_type")
    name = f.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _bad(f"{where}.name", f"'{where}.name' must be 1 to 64 letters, digits, _ or -, got "
                   f"{json.dumps(name)[:70]}")
    if name in seen:
        raise _bad(f"{where}.name", f"'{where}.name': the function name {name!r} is offered twice; names must be "
                   "unique")
    seen.add(name)
    if f.get("description") is not None and not isinstance(f["description"], str):
        raise _bad(f"{where}.description", f"'{where}.description' must be a string", "invalid_type")
    params = f.get("parameters")
    if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
        raise _bad(f"{where}.parameters", f"'{where}.parameters' must be the JSON schema of an object, like "
                   "{\"type\": \"object\", \"properties\": {...}}", "invalid_type")
    if f.get("strict") is not None and not isinstance(f["strict"], bool):
        raise _bad(f"{where}.strict", f"'{where}.strict' must be a boolean", "invalid_type")
    return {k: f[k] for k in ("name", "description", "parameters", "strict") if f.get(k) is not None}


def check_tools(tools) -> list[dict] | None:
    """tools (OpenAI's list) checked, each as {"type": "function", "function": {...}}; None for None or [].
    InvalidRequestError naming the field at fault (param "tools[0].function.name", ...)."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise _bad("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects",
                   "invalid_type")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"tools[{i}]", f"'tools[{i}]' must be an object like {{\"type\": \"function\", \"function\": "
                       "{\"name\", \"description\", \"parameters\"}}", "invalid_type")
        out.append({"type": "function", "function": _check_function(tool.get("function"), f"tools[{i}].function",
                                                                     seen)})
    return out or None


def check_tool_choice(choice, parallel_tool_calls=None, tools: list[dict] | None = None) -> ToolChoice:
    """tool_choice ("auto", "none", "required", {"type": "function", "function": {"name"}}; None: "auto") and
    parallel_tool_calls (None: true) checked against the (checked) tools: a required or named choice needs them.
    A ToolChoice is taken as it is."""
    if isinstance(choice, ToolChoice):
        return choice
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _bad("parallel_tool_calls", "'parallel_tool_calls' must be a boolean", "invalid_type")
    parallel = parallel_tool_calls is not False
    names = [t["function"]["name"] for t in tools or ()]
    if choice is None or choice in ("auto", "none"):
        return ToolChoice(choice or "auto", None, parallel)
    if choice == "required":
        if not names:
            raise _bad("tool_choice", "'tool_choice' \"required\" needs 'tools' to call")
        return ToolChoice("required", None, parallel)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise _bad("tool_choice", f"'tool_choice' must be one of {MODES} or {{\"type\": \"function\", "
                   f"\"function\": {{\"name\": ...}}}}, got {json.dumps(choice, default=repr)[:60]}", "invalid_type")
    if name not in names:
        raise _bad("tool_choice", f"'tool_choice' names the function {name!r}, which 'tools' does not offer "
                   f"({', '.join(names) or 'no tools'})")
    return ToolChoice("function", name, parallel)


# -- what the chat template sees ---------------------------------------------------------------------------------


def _arguments(text):
    """A call's arguments as the templates take them: an object (OpenAI sends its JSON text)."""
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, dict) else text
    return text


def _calls_text(calls: list[dict]) -> str:
    """Calls in the generic JSON syntax (as a template without tool support shows them)."""
    items = [{"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])} for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def template_view(messages: list[dict], tools: list[dict] | None, source: str) -> tuple[list[dict], list | None]:
    """(messages, tools) as the chat template (source: its text) gets them: role, content (a string), an assistant's
    tool_calls with their arguments as objects, a tool message's tool_call_id and name (from its call when not
    given); the reasoning left out. A template that renders no tools gets them in the system message instead."""
    native_calls, names, out = "tool_calls" in source, {}, []
    for m in messages:
        msg = {"role": m["role"], "content": m.get("content") or ""}
        calls = m.get("tool_calls") or []
        names.update((c.get("id"), c["function"]["name"]) for c in calls)
        if calls and native_calls:
            msg["tool_calls"] = [c | {"function": c["function"] | {"arguments": _arguments(c["function"]["arguments"])}}
                                 for c in calls]
        elif calls:
            msg["content"] = "\n".join(filter(None, (msg["content"], _calls_text(calls))))
        if m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id")
            if m.get("name") or names.get(m.get("tool_call_id")):
                msg["name"] = m.get("name") or names[m.get("tool_call_id")]
        out.append(msg)
    if not tools or "tools" in source:
        return out, tools
    prompt = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}, *out[1:]], None
    return [{"role": "system", "content": prompt}, *out], None


def _mistral_id() -> str:
    """Mistral's templates take call ids of 9 letters and digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def call_parser(fmt: str, tools: list[dict] | None, choice: ToolChoice) -> ToolCallParser | None:
    """The parser of a turn's calls (None when no tools are offered or the choice is "none")."""
    if not tools or choice.mode == "none":
        return None
    names = [choice.name] if choice.mode == "function" else [t["function"]["name"] for t in tools]
    return ToolCallParser(fmt, names, make_id=_mistral_id if fmt == "mistral" else new_call_id)


class ToolSplitter:
    """A turn's pieces, as ThinkSplitter's (feed / flush) with the calls in the content (parser: call_parser's, None
    for none) as pieces of kind "tool_call". calls: the answer's ToolCalls; done: a call came and no other may
    (parallel False): the answer ends there, and what follows is dropped."""

    def __init__(self, think: ThinkSplitter, parser: ToolCallParser | None = None, parallel: bool = True):
        self.think, self.parser, self.parallel = think, parser, parallel
        self.calls: list = []

    @property
    def done(self) -> bool:
        return bool(self.calls) and not self.parallel

    def feed(self, text: str) -> list[Piece]:
        return self._split(self.think.feed(text), final=False)

    def flush(self) -> list[Piece]:
        return self._split(self.think.flush(), final=True)

    def _split(self, pieces: list[Piece], final: bool) -> list[Piece]:
        if self.parser is None:
            return pieces
        out = []
        for p in pieces:
            if p.kind != "content":
                out.append(p)
            elif not self.done:
                out += self._pieces(self.parser.feed(p.text))
        return out + (self._pieces(self.parser.finish()) if final else [])

    def _pieces(self, events: list[tuple]) -> list[Piece]:
        out = []
        for kind, value in events:
            if self.done:
                break
            if kind == "content":
                out.append(Piece(value))
            else:
                out.append(Piece("", "tool_call", tool_call=value, index=len(self.calls)))
                self.calls.append(value)
        return out

    def finish(self, answer: dict, usage) -> None:
        """Put the calls on the answer's message (OpenAI's tool_calls), and finish_reason "tool_calls" on the turn's
        usage when the answer ended with them (not cut by max_tokens or cancelled)."""
        if self.calls:
            answer["tool_calls"] = [c.to_openai() for c in self.calls]
            if self.done or usage.finish_reason == "stop":
                usage.finish_reason = "tool_calls"


# -- the grammar of a required or named choice -------------------------------------------------------------------


def _marker(tokenizer, text: str) -> str:
    """text in a Lark grammar: the special token it is (`<[id]>`: llguidance writes special tokens only so), else a
    string literal."""
    ids = tokenizer.encode(text, add_special=False, parse_special=True)
    if len(ids) == 1 and tokenizer.is_special(ids[0]):
        return f"<[{ids[0]}]>"
    return json.dumps(text)


def _json(schema: dict) -> str:
    return "%json " + json.dumps(schema | {"x-guidance": _LAYOUT}, ensure_ascii=False)


def _call_schema(tool: dict, key: str) -> dict:
    f = tool["function"]
    return {"type": "object", "properties": {"name": {"const": f["name"]}, key: f.get("parameters") or _NO_ARGUMENTS},
            "required": ["name", key], "additionalProperties": False}


def _calls_rules(fmt: str, tools: list[dict], parallel: bool, tokenizer, source: str) -> list[str]:
    """Lark rules whose `calls` is the format's call syntax for tools: one call, or (parallel) one or more."""
    key = "parameters" if fmt == "llama3" else "arguments"
    one = _json({"anyOf": [_call_schema(t, key) for t in tools]})
    if fmt == "hermes":
        rules = [f'call: {_marker(tokenizer, "<tool_call>")} "\\n" fn "\\n" {_marker(tokenizer, "</tool_call>")}',
                 f"fn: {one}"]
        return rules + ["calls: call (SEP call)*" if parallel else "calls: call"]
    if fmt == "llama3":
        return [f"fn: {one}", 'calls: fn ("; " fn)*' if parallel else "calls: fn"]
    if fmt == "json":
        return [f"fn: {one}", 'calls: fn | "[" fn (", " fn)* "]"' if parallel else "calls: fn"]
    marker = _marker(tokenizer, "[TOOL_CALLS]")
    if "[ARGS]" in source:  # [TOOL_CALLS]name[ARGS]{...}, repeated
        args = _marker(tokenizer, "[ARGS]")
        each = " | ".join(f'{json.dumps(t["function"]["name"])} {args} '
                          f'{_json(t["function"].get("parameters") or _NO_ARGUMENTS)}' for t in tools)
        return [f"call: {marker} ({each})", "calls: call+" if parallel else "calls: call"]
    items = {"anyOf": [_call_schema(t, key) for t in tools]}
    listed = _json({"type": "array", "items": items, "minItems": 1} | ({} if parallel else {"maxItems": 1}))
    return [f'calls: {marker} " "? {listed}']


def call_grammar(fmt: str, tools: list[dict], choice: ToolChoice, tokenizer, source: str = "",
                 thinking: str | None = None) -> structured.ResponseFormat:
    """The constraint of a required or named choice: the answer is the format's call(s) of the offered tools (of
    choice.name), arguments valid against the function's parameters schema, nothing else; thinking "optional" lets
    a `<think>…</think>` block come first, "open" means the prompt opened one (the answer begins inside it).
    InvalidRequestError (param "tools") when a parameters schema cannot be compiled."""
    offered = [t for t in tools if choice.mode != "function" or t["function"]["name"] == choice.name]
    rules = ["%llguidance {}", r"SEP: /[ \t\r\n]{0,8}/"]
    close = _marker(tokenizer, "</think>")
    rules.append(r"think_rest[lazy]: /(.|\n)*<\/think>/" if close.startswith('"') else
                 rf"think_rest: /(.|\n)*/ {close}")
    start = {"open": "think_rest SEP calls", "optional": f"({_marker(tokenizer, '<think>')} think_rest SEP)? calls"}
    rules.append("start: " + start.get(thinking, "calls"))
    rules += _calls_rules(fmt, offered, choice.parallel, tokenizer, source)
    try:
        return structured.grammar("\n".join(rules), "lark")
    except InvalidRequestError as e:
        raise _bad("tools", f"'tools': the functions' parameters cannot be turned into a grammar: "
                   f"{str(e).removeprefix(repr(structured.PARAM) + ': ')}") from None
