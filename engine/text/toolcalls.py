"""Tool calls in a model's output: each family's syntax parsed into OpenAI's shape (an id, the function's name and
its arguments as a JSON object's text), incrementally while the text streams.

Formats (`detect_format` picks one from the chat template's source):
- "hermes" (Qwen2.5, Qwen3, Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number,
  text around them is content;
- "mistral": `[TOOL_CALLS]` then `[{"name": ..., "arguments": {...}}, ...]`, or `name[ARGS]{...}` per call;
- "llama3" (Llama 3.1-3.3): the whole answer is `{"name": ..., "parameters": {...}}` (after an optional
  `<|python_tag|>`), several separated by `;`;
- "json" (the fallback): the whole answer is a call object (`arguments` or `parameters`), a list of them or
  `{"tool_calls": [...]}`, optionally in a ```json fence.
Text that looks like a call but does not parse, or names no offered tool, stays content: nothing is dropped.
"""
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FORMATS = ("hermes", "mistral", "llama3", "json")
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL, _ARGS, _PYTHON_TAG = "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"


@dataclass(frozen=True)
class ToolCall:
    """One call: id ("call_" + 24 hex digits), the function's name, its arguments as JSON text of an object."""
    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def detect_format(template_source: str | None) -> str:
    """The tool-call syntax a chat template teaches its model ("json" when it shows none)."""
    src = template_source or ""
    if _OPEN in src:
        return "hermes"
    if _MISTRAL in src:
        return "mistral"
    if _PYTHON_TAG in src or ("<|start_header_id|>" in src and '"parameters"' in src):
        return "llama3"
    return "json"


class ToolCallParser:
    """Splits a streamed answer into content and tool calls.

    feed(text) and finish() return events, ("content", str) or ("tool_call", ToolCall), in order; content that
    might begin a call is held back until it is clear. tool_names: the offered functions (None: any name)."""

    def __init__(self, fmt: str, tool_names: Iterable[str] | None = None,
                 make_id: Callable[[], str] = new_call_id):
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool-call format {fmt!r} (known: {', '.join(FORMATS)})")
        self.fmt = fmt
        self.names = None if tool_names is None else set(tool_names)
        self._make_id = make_id
        self._buf = ""
        self._holding = False  # the answer began as a call does: held whole until finish (llama3, json, mistral)
        self._started = False  # the answer began as content: streamed as it comes

    def feed(self, text: str) -> list[tuple]:
        self._buf += text
        if self.fmt == "hermes":
            return self._feed_hermes(final=False)
        return self._feed_whole()

    def finish(self) -> list[tuple]:
        if self.fmt == "hermes":
            return self._feed_hermes(final=True)
        text, self._buf = self._buf, ""
        if self._holding:
            calls = self._parse_whole(text)
            return [("tool_call", c) for c in calls] if calls else _content(text)
        return _content(text)

    # --- hermes: <tool_call>...</tool_call> anywhere in the answer ---

    def _feed_hermes(self, final: bool) -> list[tuple]:
        events = []
        while True:
            start = self._buf.find(_OPEN)
            if start < 0:
                keep = 0 if final else _partial_suffix(self._buf, _OPEN)
                events += _content(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return events
            end = self._buf.find(_CLOSE, start)
            if end < 0 and not final:
                events += _content(self._buf[:start])
                self._buf = self._buf[start:]
                return events
            body = self._buf[start + len(_OPEN):end if end >= 0 else len(self._buf)]
            whole = self._buf[start:end + len(_CLOSE) if end >= 0 else len(self._buf)]
            calls = self._calls(_loads(body))
            events += _content(self._buf[:start])
            events += [("tool_call", c) for c in calls] if calls else _content(whole)
            self._buf = self._buf[start + len(whole):]

    # --- the others: decided by how the answer begins, parsed whole at the end ---

    def _feed_whole(self) -> list[tuple]:
        if self._holding:
            return []
        stripped = self._buf.lstrip()
        if not stripped and not self._started:
            return []
        if self._started:
            text, self._buf = self._buf, ""
            return _content(text)
        starts = {"mistral": (_MISTRAL,), "llama3": (_PYTHON_TAG, "{"), "json": ("{", "[", "```")}[self.fmt]
        if any(stripped.startswith(s) or s.startswith(stripped) for s in starts):
            if any(stripped.startswith(s) for s in starts):
                self._holding = True
            return []
        text, self._buf = self._buf, ""
        self._started = True
        return [("content", text)]

    def _parse_whole(self, text: str) -> list[ToolCall]:
        text = text.strip()
        if self.fmt == "mistral":
            return self._parse_mistral(text[len(_MISTRAL):].strip())
        if self.fmt == "llama3":
            text = text.removeprefix(_PYTHON_TAG).strip()
            parts = [_loads(p) for p in _split_top_level(text, ";")]
            return self._calls(parts) if parts and all(p is not None for p in parts) else []
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
        value = _loads(fenced.group(1) if fenced else text)
        if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
            value = [c.get("function", c) if isinstance(c, dict) else c for c in value["tool_calls"]]
        return self._calls(value)

    def _parse_mistral(self, text: str) -> list[ToolCall]:
        if text.startswith("["):
            return self._calls(_loads(text))
        calls = []
        for piece in text.split(_MISTRAL):
            name, sep, args = piece.partition(_ARGS)
            if not sep:
                return []
            calls.append({"name": name.strip(), "arguments": _loads(args)})
        return self._calls(calls)

    def _calls(self, value) -> list[ToolCall]:
        """ToolCalls of a parsed call object or list of them; [] unless every one is a well-formed call."""
        items = value if isinstance(value, list) else [value]
        calls = []
        for item in items:
            call = self._call(item)
            if call is None:
                return []
            calls.append(call)
        return calls

    def _call(self, item) -> ToolCall | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            args = _loads(args)
        if not isinstance(args, dict) or (self.names is not None and item["name"] not in self.names):
            return None
        return ToolCall(self._make_id(), item["name"], json.dumps(args, ensure_ascii=False))


def _content(text: str) -> list[tuple]:
    return [("content", text)] if text else []


def _loads(text: str):
    """JSON value of text, None if it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that is a proper beginning of marker (held back: the marker may follow)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _split_top_level(text: str, sep: str) -> list[str]:
    """text split at sep outside JSON strings, brackets and braces."""
    parts, depth, start, in_string, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), in_string and (escaped or ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]
