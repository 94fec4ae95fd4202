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

Templates come from model files, so they are untrusted: besides the sandbox, a render runs under limits, each
a module constant that a ``ChatTemplate`` keyword overrides. Going over one is a ``TemplateError`` naming it.

- ``TIME_LIMIT_S`` (2 s, ``time_limit_s``): wall time of one render. Checked at every loop step, call and
  filter (all else a template does runs a bounded number of times between two of them), so it holds on any
  thread (no signals).
- ``MAX_OUTPUT_CHARS`` (4,000,000 plus the input's size, ``max_output_chars``): text produced, counted as each
  piece is produced (also inside macros and ``{% set %}`` blocks), before it is kept.
- ``MAX_ITEMS`` (1,000,000 plus the input's size, ``max_items``): chars of a string or items of a list that one
  operation may build: ``+``, ``*``, ``~``, ``%``, ``str.format``, string methods (``center``, ``replace``,
  ``join``, ...), every filter (``format``, ``indent``, ``center``, ``join``, ``tojson`` with its indent,
  ``batch``, ...), ``lipsum`` and ``strftime_now``; estimated before building where the arguments can
  multiply the size, and checked on the result.
- ``MAX_INT_BITS`` (65,536, ``max_int_bits``): size of a number built by ``*`` or ``**`` (and ``round``'s
  precision).
- ``range`` is the sandbox's, at most 100,000 items (jinja2's ``MAX_RANGE``).

The input's size (the chars of the messages, tools, documents and keywords) is added to the size limits, so any
conversation can be rendered whole. A real template stays far below every limit: a 200-message conversation
renders in milliseconds with no expression over a few kB. Templates compile without jinja2's constant folding,
which would run an expression such as ``9**(9**9)`` while loading the model.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.exceptions
import jinja2.ext
import jinja2.filters
import jinja2.nodes
import jinja2.runtime
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


@jinja2.pass_context
def _strftime_now(context, format):
    _budget(context).size(len(format) * 16, "strftime_now's result")  # no directive expands 8-fold
    return datetime.now().strftime(format)


@jinja2.pass_context
def _lipsum(context, n=5, html=True, min=20, max=100):
    _budget(context).size(n * (max * 14 + 20), "lipsum's result")  # words are at most 13 chars
    return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


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


# ---- limits -------------------------------------------------------------------------------------------------

TIME_LIMIT_S = 2.0
MAX_OUTPUT_CHARS = 4_000_000
MAX_ITEMS = 1_000_000
MAX_INT_BITS = 65_536


@dataclass(frozen=True)
class RenderLimits:
    """The limits of one template's renders (see the module docstring)."""
    time_limit_s: float = TIME_LIMIT_S
    max_output_chars: int = MAX_OUTPUT_CHARS
    max_items: int = MAX_ITEMS
    max_int_bits: int = MAX_INT_BITS


class _LimitError(jinja2.exceptions.TemplateError):
    """A render went over one of its limits; the message names the limit."""


_BUDGET = "render budget"  # the render variable holding the _Budget: not a name a template can write


class _Budget:
    """One render's deadline, size caps (the limits plus the input's size) and output left."""

    __slots__ = ("limits", "input_size", "deadline", "max_items", "max_output", "output_left")

    def __init__(self, limits: RenderLimits, input_size: int):
        self.limits = limits
        self.input_size = input_size
        self.deadline = time.monotonic() + limits.time_limit_s
        self.max_items = limits.max_items + input_size
        self.max_output = self.output_left = limits.max_output_chars + input_size

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitError(f"the time limit ({self.limits.time_limit_s:g} s)")

    def size(self, n: float, what: str) -> None:
        if n > self.max_items:
            raise _LimitError(f"the size limit ({self.limits.max_items} chars or items per operation, plus the "
                              f"input's {self.input_size}): {what} would have {n:.0f}")

    def bits(self, n: float, what: str) -> None:
        if n > self.limits.max_int_bits:
            raise _LimitError(f"the number limit ({self.limits.max_int_bits} bits): {what} would have {n:.0f}")

    def output(self, n: int) -> None:
        self.output_left -= n
        if self.output_left < 0:
            raise _LimitError(f"the output limit ({self.limits.max_output_chars} chars, plus the input's "
                              f"{self.input_size})")


def _budget(context: jinja2.runtime.Context) -> _Budget:
    return context.parent[_BUDGET]


_SIZED = (str, bytes, list, tuple, dict, set)
_SIZED_TYPES = frozenset(_SIZED)


def _length(value: Any) -> int:
    """Chars or items of a string or container, 0 for anything else."""
    return len(value) if type(value) in _SIZED_TYPES or isinstance(value, _SIZED) else 0


def _text_size(value: Any, limit: float, per_item: int = 0, per_level: int = 0) -> float:
    """About how many chars ``str(value)`` (or its JSON) has: the chars of its strings plus one for every other
    item, and ``per_item + per_level * depth`` more for every item of a container. Counts no further than
    just past ``limit``, so it costs no more than the limit, however large (or shared) the value is."""
    if isinstance(value, str):
        return len(value)
    total, level, depth = 0, [value], 0
    while level and total <= limit:
        depth += 1
        cost = 1 + per_item + per_level * depth
        below = []
        for v in level:
            if isinstance(v, str):
                total += len(v)
                continue
            if isinstance(v, jinja2.utils.Namespace):
                v = v._Namespace__attrs
            if isinstance(v, dict):
                total += 2 * len(v) * cost
                below += v
                below += v.values()
            elif isinstance(v, (list, tuple)):
                total += len(v) * cost
                below += v
            else:
                total += 1
            if total > limit:
                break
        level = below
    return total


def _text(budget: _Budget, value: Any, what: str = "the value") -> float:
    """_text_size of value, which must be within the size limit."""
    n = _text_size(value, budget.max_items)
    budget.size(n, what)
    return n


# ---- size estimates of formatting, string methods and filters, before they build anything ----------------

_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?[a-zA-Z%]")


def _width(digits: str) -> int:
    return int(digits) if len(digits) < 19 else 10**19


def _formatted_size(budget: _Budget, fmt: str, specs: list[str], values: list) -> float:
    """Upper bound on the size of ``fmt`` formatted with ``values``, given its fields' width/precision specs
    (a spec containing "*" or "{" takes its widths from the int values)."""
    dynamic = max((v for v in values if isinstance(v, int)), default=0)
    widths = [max(dynamic if ("*" in spec or "{" in spec) else 0,
                  max(map(_width, re.findall(r"\d+", spec)), default=0)) for spec in specs]
    value_size = max((_text(budget, v, "a formatted value") for v in values), default=0)
    return len(fmt) + sum(widths) + len(specs) * value_size


def _percent_size(budget: _Budget, fmt: str, args: Any) -> float:
    """Upper bound on the size of ``fmt % args``."""
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    specs = [m.group(0) for m in _PERCENT_FIELD.finditer(fmt)]
    return _formatted_size(budget, fmt, specs, values)


def _format_method_size(budget: _Budget, fmt: str, args: tuple, kwargs: dict, format_map: bool) -> float:
    """Upper bound on the size of ``fmt.format(*args, **kwargs)`` / ``fmt.format_map(*args)``."""
    named = args[0] if format_map and args and isinstance(args[0], Mapping) else kwargs
    values = [*(() if format_map else args), *named.values()]
    specs = [spec or "" for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None]
    return _formatted_size(budget, fmt, specs, values)


def _translate_size(s: str, table: Any) -> float:
    values = table.values() if isinstance(table, Mapping) else table if isinstance(table, (list, tuple)) else ()
    return len(s) * max((len(v) for v in values if isinstance(v, str)), default=1)


def _replace_size(s: str | bytes, old: Any, new: Any, count: Any = -1) -> float:
    if not isinstance(old, type(s)) or not isinstance(new, type(s)) or not isinstance(count, int):
        return len(s)  # the call fails on its own
    hits = s.count(old) if old else len(s) + 1
    return len(s) + max(0, len(new) - len(old)) * (hits if count < 0 else min(hits, count))


def _join_size(sep: str | bytes, items: list) -> float:
    return len(sep) * max(0, len(items) - 1) + sum(len(i) for i in items if isinstance(i, (str, bytes)))


# str/bytes methods whose result can be far larger than the string: their result's size from (s, *args)
_GROWING_METHODS = {
    "center": lambda s, width=0, *_: width,
    "ljust": lambda s, width=0, *_: width,
    "rjust": lambda s, width=0, *_: width,
    "zfill": lambda s, width=0: width,
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t" if isinstance(s, str) else b"\t") * tabsize,
    "replace": _replace_size,
    "join": _join_size,
    "translate": _translate_size,
}


def _check_call(budget: _Budget, obj: Any, args: tuple, kwargs: dict) -> tuple:
    """Size checks before a template calls a builtin method that can build a large result; returns the
    arguments to call it with (an iterable given to ``join`` is read into a list first)."""
    target = getattr(obj, "__wrapped__", obj) if isinstance(obj, types.FunctionType) else obj  # str.format
    if not isinstance(target, types.BuiltinMethodType):
        return args
    owner, name = target.__self__, target.__name__
    if isinstance(owner, str) and name in ("format", "format_map"):
        budget.size(_format_method_size(budget, owner, args, kwargs, name == "format_map"), f"str.{name}")
    elif isinstance(owner, (str, bytes)) and name in _GROWING_METHODS:
        if name == "join" and args:
            args = (list(args[0]), *args[1:])
        budget.size(_GROWING_METHODS[name](owner, *args, **kwargs), f"str.{name}")
    elif isinstance(owner, int) and name == "to_bytes":
        budget.size(kwargs.get("length", args[0] if args else 1), "int.to_bytes")
    return args


def _center_size(budget, value, width=80):
    return max(_text(budget, value), width)


def _indent_size(budget, value, width=4, first=False, blank=False):
    pad = len(width) if isinstance(width, str) else width
    return _text(budget, value) + (str(value).count("\n") + 1) * pad


def _format_filter_size(budget, value, *args, **kwargs):
    return _percent_size(budget, str(value), kwargs or args)


def _replace_filter_size(budget, value, old, new, count=None):
    _text(budget, value)
    return _replace_size(str(value), str(old), str(new), -1 if count is None else count)


def _wordwrap_size(budget, value, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    n = _text(budget, value)
    return n + (n + 1) * len(wrapstring or "\n")


def _join_filter_size(budget, value, d="", attribute=None):
    return _text(budget, value) + len(str(d)) * _length(value)


def _tojson_size(budget, value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    pad = len(indent) if isinstance(indent, str) else indent or 0
    seps = sum(map(len, separators)) if isinstance(separators, (list, tuple)) else 2
    return _text_size(value, budget.max_items, per_item=seps, per_level=pad)


def _pprint_size(budget, value):
    return _text_size(value, budget.max_items, per_item=2, per_level=1)


def _count_arg_size(budget, value, count, fill_with=None):
    return count  # batch's line count, slice's number of slices


def _round_size(budget, value, precision=0, method="common"):
    budget.bits(abs(precision) * 3.33, "round's scale 10**precision")
    return 0


def _stringified_size(budget, value, *args, **kwargs):
    return _text_size(value, budget.max_items)


# filters whose size to estimate before they run: their result's size from (budget, *args, **kwargs)
_FILTER_SIZES = {
    "center": _center_size, "indent": _indent_size, "format": _format_filter_size,
    "replace": _replace_filter_size, "wordwrap": _wordwrap_size, "join": _join_filter_size,
    "tojson": _tojson_size, "pprint": _pprint_size, "batch": _count_arg_size, "slice": _count_arg_size,
    "round": _round_size,
    **{name: _stringified_size for name in (
        "string", "trim", "upper", "lower", "title", "capitalize", "truncate", "striptags", "urlize",
        "urlencode", "xmlattr", "escape", "e", "forceescape", "safe", "wordcount")},
}


@jinja2.pass_context
def _sum(context, iterable, attribute=None, start=0):
    """jinja2's ``sum`` filter; anything but numbers is added one item at a time under the limits."""
    if attribute is not None:
        iterable = map(jinja2.filters.make_attrgetter(context.environment, attribute), iterable)
    values = list(iterable)
    if all(isinstance(v, (int, float)) for v in (start, *values)):
        return sum(values, start)
    total, budget = start, _budget(context)
    for value in values:
        budget.tick()
        total = context.environment.call_binop(context, "+", total, value)
    return total


def _guarded_filter(name: str, func, size=None):
    """``func`` as a filter that checks the deadline, then ``size``'s estimate, then the result's length."""
    pass_arg = jinja2.utils._PassArg.from_obj(func)

    @jinja2.pass_context
    def guarded(context, *args, **kwargs):
        budget = _budget(context)
        budget.tick()
        if size is not None:
            budget.size(size(budget, *args, **kwargs), f"|{name}")
        if pass_arg is jinja2.utils._PassArg.context:
            args = (context, *args)
        elif pass_arg is jinja2.utils._PassArg.eval_context:
            args = (context.eval_ctx, *args)
        elif pass_arg is jinja2.utils._PassArg.environment:
            args = (context.environment, *args)
        result = func(*args, **kwargs)
        budget.size(_length(result), f"|{name}")
        return result

    return guarded


@jinja2.pass_context
def _finalize(context, value):
    """Every ``{{ ... }}`` value is counted against the output limit before it is turned into text."""
    budget = _budget(context)
    budget.output(_text_size(value, budget.output_left))
    return value


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """jinja2's code generator, with every loop guarded, ``~`` checked and literal output counted."""

    def visit_For(self, node, frame):
        """The loop runs over ``environment.guard_loop(context, <its iterable>)``."""
        nodes = jinja2.nodes
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guard_loop"), [nodes.ContextReference(), node.iter],
                               [], None, None, lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node, frame):
        self.write("environment.checked_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Output(self, node, frame):
        literal = sum(len(child.data) for child in node.nodes if isinstance(child, jinja2.nodes.TemplateData))
        if literal:
            self.writeline(f"environment.count_output(context, {literal})")
        super().visit_Output(node, frame)


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the limits checked in its operator, call and loop hooks."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def call_binop(self, context, operator, left, right):
        budget = context.parent[_BUDGET]
        if operator == "+":
            strings = type(left) is str and type(right) is str  # the common case, made fast
            budget.size(len(left) + len(right) if strings else _length(left) + _length(right), "+")
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                budget.bits(left.bit_length() + right.bit_length(), "*")
            else:
                count, seq = (right, left) if isinstance(right, int) else (left, right)
                budget.size(_length(seq) * count if isinstance(count, int) else 0, "*")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                too_many = right > budget.limits.max_int_bits  # log2 of a huge int is slow
                budget.bits(right if too_many else right * math.log2(abs(left)), "**")
        elif operator == "%" and isinstance(left, str):
            budget.size(_percent_size(budget, left, right), "%")
        return self.binop_table[operator](left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 — jinja2's signature
        budget = _budget(__context)
        budget.tick()
        args = _check_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.size(_length(result), "a call's result")
        return result

    def guard_loop(self, context, iterable):
        budget = _budget(context)
        for item in iterable:
            budget.tick()
            yield item

    def checked_concat(self, context, parts):
        budget = _budget(context)
        budget.size(sum(_text_size(p, budget.max_items) for p in parts), "~")
        return (jinja2.runtime.markup_join if context.eval_ctx.autoescape else jinja2.runtime.str_join)(parts)

    def count_output(self, context, n):
        _budget(context).output(n)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, optimized=False, finalize=_finalize,
                              extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters["sum"] = _sum
    env.filters = {name: _guarded_filter(name, f, _FILTER_SIZES.get(name)) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _lipsum
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
                 special_tokens: Mapping[str, str] | None = None, origin: str = "chat template",
                 time_limit_s: float = TIME_LIMIT_S, max_output_chars: int = MAX_OUTPUT_CHARS,
                 max_items: int = MAX_ITEMS, max_int_bits: int = MAX_INT_BITS):
        if not isinstance(source, str) or not source.strip():
            raise TemplateError(f"{origin} is empty")
        self.source = source
        self.origin = origin
        self.limits = RenderLimits(time_limit_s, max_output_chars, max_items, max_int_bits)
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
        variables = dict(self.special_tokens)
        variables.update(_plain(kwargs))
        variables.update(messages=_prepare_messages(list(messages)), tools=_plain(tools),
                         documents=_plain(documents), add_generation_prompt=add_generation_prompt)
        variables[_BUDGET] = _Budget(self.limits, _text_size(variables, math.inf))
        try:
            return self._template.render(variables)
        except _LimitError as e:
            raise TemplateError(f"{self.origin} went over {e.message}") from None
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
            from engine.formats import jsonfile  # bounded depth; ModelFileError naming the file

            config = jsonfile.read(tdir / "tokenizer_config.json")
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
