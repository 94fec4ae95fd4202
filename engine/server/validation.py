"""Request checks: JSON bodies and WebSocket frames (bounded size and nesting, valid Unicode) and the OpenAI fields
(model, messages with tool calls and results, prompt, sampling, stream options, tools); anything else is an ApiError
in OpenAI's shape (the tools' checks, engine.chat.tools, raise InvalidRequestError naming the field: a 400 too)."""
import json

from starlette.requests import ClientDisconnect, Request

from engine.chat.tools import ToolChoice, check_tool_choice, check_tools
from engine.formats import jsonfile
from engine.runtime.sampler import SamplingParams
from engine.server.errors import ApiError, ClientGone

MAX_BODY_BYTES = 1 << 20
ROLES = ("system", "user", "assistant", "developer", "tool")


def _encodes(value) -> bool:
    """Whether value (JSON data) encodes as UTF-8: false when a string or key holds a lone surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(raw: bytes | str, what: str = "the body") -> dict:
    """A JSON object from raw text (nesting bounded by engine.formats.jsonfile); 400 for anything else, including
    strings that hold a lone surrogate (JSON's "\\ud800" escapes decode to them; they are not Unicode text)."""
    try:
        value = jsonfile.loads(raw or b"{}")
    except ValueError as e:
        raise ApiError(400, f"{what} is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object", code="invalid_json")
    if not _encodes(value):
        param = next((k for k, v in value.items() if _encodes(k) and not _encodes(v)), None)
        raise ApiError(400, f"{what} holds invalid Unicode{f' in {param!r}' if param else ''}: a lone surrogate "
                       "(such as \\ud800) that no UTF-8 text can carry; send whole characters (surrogate pairs)",
                       param=param, code="invalid_unicode")
    return value


async def read_json(request: Request) -> dict:
    """The request's body as a JSON object: 413 past MAX_BODY_BYTES (declared or read), ClientGone when the
    client leaves while sending it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
    raw = b""
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
    except ClientDisconnect:
        raise ClientGone from None
    return parse_json(raw)


def ws_message(frame: dict) -> dict:
    """A client's WebSocket frame as a JSON object; ApiError (sent back as an error frame) for anything else."""
    if frame.get("text") is None:
        raise ApiError(400, "binary frames are not accepted; send JSON text frames like {\"type\": \"send\", "
                       "\"content\": \"...\"}")
    return parse_json(frame["text"], "the frame")


def check_model(body: dict, model_ids: list[str]) -> None:
    """The body's "model" must be absent, empty or one of model_ids (404 for another model)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
    if model not in (None, "", *model_ids):
        raise ApiError(404, f"the model {model!r} does not exist here; this server serves "
                       f"{' = '.join(map(repr, model_ids))} (GET /v1/models)", param="model", code="model_not_found")


def sampling_params(body: dict, llm) -> SamplingParams:
    """The SamplingParams of an OpenAI request body over the model's defaults (max_tokens None: the rest of the
    context), after the body's other generation fields (n, stream) are checked."""
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise ApiError(400, f"only n=1 is supported, got {json.dumps(body['n'])[:40]}", param="n",
                       code="invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    return SamplingParams.from_openai(body, llm.sampling_defaults, llm.n_ctx)


def logprobs_setting(body: dict, chat: bool) -> int | None:
    """How many alternatives go with each token's log-probability, None when none are asked for: chat's
    logprobs (a boolean) and top_logprobs (0-20, with logprobs true), completions' logprobs (0-20)."""
    asked, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if asked is not None and not isinstance(asked, bool):
            raise ApiError(400, "'logprobs' must be a boolean", param="logprobs", code="invalid_type")
        if top is not None and not asked:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        return _logprobs_count("top_logprobs", top or 0) if asked else None
    if body.get("echo") is not None and not isinstance(body.get("echo"), bool):
        raise ApiError(400, "'echo' must be a boolean", param="echo", code="invalid_type")
    return None if asked is None else _logprobs_count("logprobs", asked)


def _logprobs_count(name: str, value) -> int:
    if type(value) is not int or not 0 <= value <= 20:
        raise ApiError(400, f"'{name}' must be an integer in [0, 20], got {json.dumps(value)[:40]}", param=name,
                       code="invalid_value")
    return value


def include_usage(body: dict) -> bool:
    """Whether a stream ends with a usage chunk (stream_options.include_usage)."""
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                       param="stream_options")
    return bool(opts.get("include_usage"))


def _text_of(content, i: int) -> str:
    """A message's content as text: a string, or a list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}]")


def _tool_call(call, where: str) -> dict:
    """An assistant message's tool call, {"id", "type": "function", "function": {"name", "arguments"}}, checked;
    arguments as the JSON text of an object (an object is accepted too)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(call.get("id"), str) and call.get("type", "function") ==
            "function" and isinstance(function.get("name"), str)):
        raise ApiError(400, f"'{where}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                       "\"arguments\"}}", param=where, code="invalid_type")
    args = function.get("arguments")
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"'{where}.function.arguments' must be the JSON text of an object",
                       param=f"{where}.function.arguments", code="invalid_value")
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": call["id"], "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _message(m: dict, i: int) -> dict:
    """One message as {"role", "content": text} (developer → system), with an assistant's tool_calls (its content
    may then be null) and a tool message's tool_call_id (and name, when given)."""
    role, where = "system" if m["role"] == "developer" else m["role"], f"messages[{i}]"
    out = {"role": role, "content": _text_of(m.get("content") or "", i)}
    calls = m.get("tool_calls")
    if role == "assistant" and calls is not None:
        if not isinstance(calls, list):
            raise ApiError(400, f"'{where}.tool_calls' must be a list", param=f"{where}.tool_calls",
                           code="invalid_type")
        if calls:
            out["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise ApiError(400, f"'{where}.tool_call_id' must be the id of the call this message answers",
                           param=f"{where}.tool_call_id", code="invalid_type")
        out["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):
            out["name"] = m["name"]
    return out


def chat_messages(body: dict) -> list[dict]:
    """The body's messages as {"role", "content": text} (developer → system; assistant tool_calls and tool messages'
    tool_call_id kept, see _message); at least one user message."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role among {ROLES}", param=f"messages[{i}]")
        out.append(_message(m, i))
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "'messages' needs at least one user message", param="messages")
    return out


def tool_options(body: dict) -> tuple[list[dict] | None, ToolChoice]:
    """The body's tools (OpenAI's list, checked; None when absent or empty) and its tool_choice and
    parallel_tool_calls (engine.chat.tools: a bad one is a 400 naming the field)."""
    tools = check_tools(body.get("tools"))
    return tools, check_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), tools)


def enable_thinking(body: dict) -> bool | None:
    """chat_template_kwargs.enable_thinking: true, false, or None (the template's default)."""
    kwargs = body.get("chat_template_kwargs") or {}
    thinking = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    if not isinstance(kwargs, dict) or not (thinking is None or isinstance(thinking, bool)):
        raise ApiError(400, "'chat_template_kwargs' must be an object like {\"enable_thinking\": false}",
                       param="chat_template_kwargs", code="invalid_type")
    return thinking


def completion_prompt(body: dict) -> str | list[int]:
    """The body's prompt: a non-empty string (or a list of one) or a non-empty list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not (isinstance(prompt, str) and prompt) and not (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                        for t in prompt)):
        raise ApiError(400, "'prompt' must be a non-empty string (or one list of token ids)", param="prompt")
    return prompt
