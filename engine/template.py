"""Chat templates: render a model's Jinja chat template as transformers' ``apply_chat_template`` does.

The environment mirrors transformers (``utils/chat_template_utils.py``): an ``ImmutableSandboxedEnvironment``
with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension and a ``{% generation %}`` block tag
(rendered as its body), a ``tojson`` filter that keeps non-ASCII text and takes ``indent``/``separators``/
``sort_keys``, and the globals ``raise_exception``, ``strftime_now``, ``dict`` and a ``namespace`` that refuses
underscore names. Variables: ``messages``, ``add_generation_prompt``, ``tools`` (None), ``documents`` (None),
the special tokens (``bos_token``, ``eos_token``, ...; only those that are set) and any extra keyword
(``enable_thinking=False``, ...). Like transformers, message keys whose value is None are dropped, and a
message's reasoning given as ``reasoning_content``/``thinking``/``reasoning`` is visible under the names
``reasoning_content`` and ``thinking``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import InvalidRequestError, TemplateError

__all__ = ["ChatTemplate"]

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _RaisedByTemplate(jinja2.exceptions.TemplateError):
    """What ``raise_exception(msg)`` raises inside the template."""


def _raise_exception(message):
    raise _RaisedByTemplate(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` in templates, without exposing the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore-prefixed attribute names."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
            )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENV = _environment()

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain(value: Any) -> Any:
    """Plain JSON-like data only (what transformers lets a template see); other objects become "<Type>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return _plain(item())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: list[dict]) -> list[dict]:
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise InvalidRequestError(f"chat message {i} is a {type(msg).__name__}, not a dict with role/content")
        msg = {k: v for k, v in msg.items() if v is not None}
        msg = _plain(msg)
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


def _token_text(tok: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(tok, str):
        return tok
    if isinstance(tok, Mapping) and isinstance(tok.get("content"), str):
        return tok["content"]
    return None


class ChatTemplate:
    """A compiled chat template. ``render(messages)`` gives the prompt text (special tokens as text)."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None,
                 special_tokens: Mapping[str, str] | None = None, origin: str = "chat template"):
        if not isinstance(source, str) or not source.strip():
            raise TemplateError(f"{origin} is empty")
        self.source = source
        self.origin = origin
        tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        if bos_token is not None:
            tokens["bos_token"] = bos_token
        if eos_token is not None:
            tokens["eos_token"] = eos_token
        self.special_tokens: dict[str, str] = tokens
        try:
            self._template = _ENV.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise TemplateError(f"{origin} has a syntax error at line {e.lineno}: {e.message}") from None
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"{origin} cannot be compiled: {e}") from None

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    def render(self, messages: list[dict], add_generation_prompt: bool = True, *, tools: list[dict] | None = None,
               documents: list[dict] | None = None, **kwargs) -> str:
        """Render ``messages`` (dicts with role/content, ...); extra keywords become template variables."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidRequestError("cannot render a chat template for an empty conversation")
        chat = _prepare_messages(list(messages))
        variables = dict(self.special_tokens)
        variables.update(_plain(kwargs))
        try:
            return self._template.render(
                messages=chat,
                tools=_plain(tools),
                documents=_plain(documents),
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except _RaisedByTemplate as e:
            raise TemplateError(f"{self.origin} refused the conversation: {e.message}") from None
        except jinja2.exceptions.UndefinedError as e:
            raise TemplateError(f"{self.origin} used an undefined value: {e.message}") from None
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"{self.origin} tried an unsafe operation: {e}") from None
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"{self.origin} failed to render: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, RecursionError) as e:
            raise TemplateError(f"{self.origin} failed to render: {type(e).__name__}: {e}") from None

    __call__ = render

    # ---- finding the template -----------------------------------------------------------------------------

    @classmethod
    def from_sources(cls, metadata: Mapping[str, Any] | None = None, tokenizer_dir: str | Path | None = None,
                     bos_token: str | None = None, eos_token: str | None = None) -> ChatTemplate | None:
        """The model's chat template, or None when it has none.

        Looked for, in order: GGUF metadata ``tokenizer.chat_template``; in ``tokenizer_dir``,
        ``chat_template.jinja``, then ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of
        ``{name, template}`` from which "default" is taken). BOS/EOS not given are taken from
        tokenizer_config.json when it has them.
        """
        config: dict = {}
        tdir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        if tdir is not None and (tdir / "tokenizer_config.json").is_file():
            try:
                config = json.loads((tdir / "tokenizer_config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise TemplateError(f"{tdir / 'tokenizer_config.json'} is not valid JSON ({e})") from None
            if not isinstance(config, dict):
                config = {}
        special = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            text = _token_text(config.get(name))
            if text is not None:
                special[name] = text
        if bos_token is not None:
            special["bos_token"] = bos_token
        if eos_token is not None:
            special["eos_token"] = eos_token

        source, origin = None, None
        if metadata:
            value = metadata.get(GGUF_TEMPLATE_KEY)
            if isinstance(value, (bytes, bytearray)):
                value = bytes(value).decode("utf-8", errors="replace")
            if isinstance(value, str) and value.strip():
                source, origin = value, f"GGUF {GGUF_TEMPLATE_KEY}"
        if source is None and tdir is not None and (tdir / "chat_template.jinja").is_file():
            source, origin = (tdir / "chat_template.jinja").read_text(encoding="utf-8"), str(tdir / "chat_template.jinja")
        if source is None and "chat_template" in config:
            value = config["chat_template"]
            if isinstance(value, list):
                named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
                value = named.get("default")
                if value is None:
                    raise TemplateError(
                        f"{tdir / 'tokenizer_config.json'} has named chat templates {sorted(map(str, named))} "
                        "but none called 'default'"
                    )
            if isinstance(value, str) and value.strip():
                source, origin = value, f"{tdir / 'tokenizer_config.json'} chat_template"
        if source is None:
            return None
        return cls(source, special_tokens=special, origin=origin or "chat template")

    def __repr__(self) -> str:
        return f"ChatTemplate(origin={self.origin!r}, {len(self.source)} chars)"
