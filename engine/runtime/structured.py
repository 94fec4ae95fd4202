"""Structured outputs: a generation constrained to a JSON schema, any JSON object, a regular expression or a grammar
(GBNF or Lark), with llguidance (Rust; its token masks are NumPy bit arrays and it releases the GIL while it
computes one).

    fmt = response_format({"type": "json_schema", "json_schema": {"name": "person", "schema": {...}}})
    params = SamplingParams(response_format=fmt)            # or llm.generate(..., response_format={...})

`response_format` reads OpenAI's forms ({"type": "text" | "json_object" | "json_schema"}), this engine's extras
({"type": "regex", "regex"}, {"type": "grammar", "grammar", "syntax": "gbnf" | "lark"}) and, in Python, a Pydantic
model class; it compiles the grammar at once, so a schema or grammar that cannot be compiled is an
InvalidRequestError (param "response_format"), never an unconstrained answer. ResponseFormat is immutable and
carried by SamplingParams.

During generation each sequence has its own Guide (an llguidance LLMatcher over the tokenizer's vocabulary, see
`vocabulary`): the generate loop starts the next token's mask on a helper thread as soon as it has fed the matcher
the sampled token, so that it is computed while the forward runs, and the sampler gives every token the mask
forbids a logit of -inf. End-of-sequence tokens are allowed only where the grammar accepts; once the grammar can
take nothing more, the generation ends.
"""
import json
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.errors import InvalidRequestError

PARAM = "response_format"
TYPES = ("text", "json_object", "json_schema", "regex", "grammar")
SYNTAXES = ("gbnf", "lark")
# JSON layout: llguidance's defaults (",", ":" and any whitespace between items) with the whitespace between two
# items bounded, so a small model cannot fill its answer with blank lines.
JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{0,24}"}


class ResponseFormat:
    """A compiled constraint: kind ("json_object", "json_schema", "regex" or "grammar"), grammar (llguidance's
    grammar text, checked) and spec (what it was made from, as a request would carry it). Immutable: copies are
    itself, so dataclasses.asdict of a SamplingParams keeps it."""

    __slots__ = ("kind", "grammar", "spec")

    def __init__(self, kind: str, grammar: str, spec: dict):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "grammar", grammar)
        object.__setattr__(self, "spec", spec)

    def __setattr__(self, name, value):
        raise AttributeError("ResponseFormat is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, ResponseFormat) and (self.kind, self.grammar) == (other.kind, other.grammar)

    def __hash__(self) -> int:
        return hash((self.kind, self.grammar))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"ResponseFormat({json.dumps(self.spec, ensure_ascii=False)[:80]})"


def _bad(message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(f"'{PARAM}': {message}", param=PARAM, code=code)


def _checked(kind: str, grammar: str, spec: dict, what: str) -> ResponseFormat:
    """ResponseFormat(kind, grammar, spec) once llguidance has compiled the grammar; else the compiler's error."""
    import llguidance
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise _bad(f"the {what} cannot be compiled: {messages[0] if messages else 'unknown error'}")
    return ResponseFormat(kind, grammar, spec)


def json_schema(schema, name: str | None = None, kind: str = "json_schema") -> ResponseFormat:
    """The constraint of a JSON schema (a dict, or True for any JSON value)."""
    import llguidance
    if not isinstance(schema, (dict, bool)):
        raise _bad(f"the JSON schema must be an object, got {json.dumps(schema)[:40]}", "invalid_type")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise _bad(f"the JSON schema cannot be compiled: {e}") from None
    spec = ({"type": "json_object"} if kind == "json_object" else
            {"type": "json_schema", "json_schema": {"name": name or "schema", "schema": schema, "strict": True}})
    return _checked(kind, grammar, spec, "JSON schema")


def regex(pattern: str) -> ResponseFormat:
    """The constraint of a regular expression (Rust regex syntax) that the whole answer must match."""
    import llguidance
    if not isinstance(pattern, str) or not pattern:
        raise _bad("'regex' must be a non-empty string", "invalid_type")
    return _checked("regex", llguidance.LLMatcher.grammar_from_regex(pattern), {"type": "regex", "regex": pattern},
                    "regular expression")


def grammar(text: str, syntax: str | None = None) -> ResponseFormat:
    """The constraint of a context-free grammar: GBNF (llama.cpp's, start rule `root`) or Lark (llguidance's
    dialect, start rule `start`); syntax None tells them apart by their rules (`::=` or `:`)."""
    import llguidance
    if not isinstance(text, str) or not text.strip():
        raise _bad("'grammar' must be a non-empty string", "invalid_type")
    if syntax not in (None, *SYNTAXES):
        raise _bad(f"'syntax' must be one of {SYNTAXES}, got {json.dumps(syntax)[:40]}")
    try:
        compiled = (llguidance.LLMatcher.grammar_from_lark(text) if syntax == "lark" else
                    llguidance.grammar_from("gbnf", text))
    except ValueError as e:
        raise _bad(f"the grammar cannot be compiled: {e}") from None
    spec = {"type": "grammar", "grammar": text} | ({"syntax": syntax} if syntax else {})
    return _checked("grammar", compiled, spec, "grammar")


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMAS = ("items", "prefixItems", "additionalItems", "contains", "anyOf", "oneOf", "allOf", "not", "if", "then",
               "else", "additionalProperties", "propertyNames", "unevaluatedItems", "unevaluatedProperties")


def _closed(schema):
    """A Pydantic model's JSON schema with additionalProperties false on every object that lists its properties and
    says nothing of others (as the OpenAI SDK sends a model): a model reads its own fields, and an open object lets
    a small model add keys without end."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: {n: _closed(s) for n, s in v.items()} if k in _SCHEMA_MAPS and isinstance(v, dict)
           else _closed(v) if k in _SUBSCHEMAS else v for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def response_format(value) -> ResponseFormat | None:
    """The constraint a response_format value asks for; None for no constraint (None, {"type": "text"}).

    value: a ResponseFormat; {"type": "json_object"} (any JSON object; llama.cpp's "schema" key is honoured);
    {"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}} (OpenAI's; the schema is
    enforced whatever "strict" says); {"type": "regex", "regex": PATTERN}; {"type": "grammar", "grammar": TEXT,
    "syntax": "gbnf" | "lark" (optional)}; or a Pydantic model class (its model_json_schema(), objects closed:
    see _closed).
    InvalidRequestError (param "response_format") for anything else, or a schema / grammar that does not compile."""
    if value is None or isinstance(value, ResponseFormat):
        return value
    if isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):
        return json_schema(_closed(value.model_json_schema()), value.__name__)
    if not isinstance(value, dict) or value.get("type") not in TYPES:
        raise _bad(f"must be an object whose 'type' is one of {TYPES}, got {json.dumps(value, default=repr)[:60]}",
                   "invalid_type")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema(value.get("schema") or {"type": "object"}, kind="json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
            raise _bad("'json_schema' must be an object like {\"name\": \"...\", \"schema\": {...}}", "invalid_type")
        if not isinstance(spec.get("name", ""), str) or not isinstance(spec.get("strict", False), (bool, type(None))):
            raise _bad("'json_schema.name' must be a string and 'json_schema.strict' a boolean", "invalid_type")
        return json_schema(spec["schema"], spec.get("name"))
    if kind == "regex":
        return regex(value.get("regex"))
    return grammar(value.get("grammar"), value.get("syntax"))


# -- generation --------------------------------------------------------------------------------------------------

_vocabularies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_vocabulary_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
MASK_THREADS = 4  # helper threads computing masks (shared by all generations; a mask takes well under 1 ms)


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer: each token's bytes (special and end-of-sequence tokens
    behind a 0xFF byte, which no text holds, so a grammar never produces them as text), those ids,
    and a tokenize function (llguidance tokenizes the bytes a grammar forces with it, then allows only the first
    of those tokens)."""

    def __init__(self, tokenizer):
        n = tokenizer.vocab_size
        self.special_token_ids = [i for i in range(n) if tokenizer.is_special(i) or i in tokenizer.eos_ids]
        special = set(self.special_token_ids)
        self.tokens = [(b"\xff" if i in special else b"") + tokenizer.token_bytes(i) for i in range(n)]
        self.eos_token_id = min(tokenizer.eos_ids) if tokenizer.eos_ids else None
        self.bos_token_id = tokenizer.bos_id
        self._tokenizer = tokenizer
        self._ids: dict[bytes, int] = {}
        for i in reversed(range(n)):  # the lowest id of equal pieces wins
            if self.tokens[i] and i not in special:
                self._ids[self.tokens[i]] = i
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, text) -> list[int]:
        """Token ids whose bytes are exactly text's: the tokenizer's own encoding when it gives those bytes (not
        when a SentencePiece vocabulary puts a space in front), else the longest pieces from left to right."""
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        try:
            ids = self._tokenizer.encode(data.decode("utf-8"), add_special=False, parse_special=False)
        except UnicodeDecodeError:
            ids = None
        if ids is not None and b"".join(self.tokens[i] for i in ids) == data:
            return ids
        return self._greedy(data)

    def _greedy(self, data: bytes) -> list[int]:
        ids, at = [], 0
        while at < len(data):
            for size in range(min(self._longest, len(data) - at), 0, -1):
                token = self._ids.get(data[at:at + size])
                if token is not None:
                    ids.append(token)
                    at += size
                    break
            else:  # a byte no token holds: it cannot be produced
                at += 1
        return ids


def vocabulary(tokenizer):
    """The llguidance.LLTokenizer of an engine.text.tokenizer.Tokenizer (byte-level BPE and SentencePiece alike:
    both give each token's exact bytes), built once per tokenizer (about 0.1 s for 49k tokens)."""
    import llguidance
    with _vocabulary_lock:
        built = _vocabularies.get(tokenizer)
        if built is None:
            wrapper = llguidance.TokenizerWrapper(_Vocabulary(tokenizer))
            built = llguidance.LLTokenizer(wrapper, n_vocab=tokenizer.vocab_size,
                                           eos_token=sorted(tokenizer.eos_ids) or None)
            _vocabularies[tokenizer] = built
        return built


def _mask_pool() -> ThreadPoolExecutor:
    global _pool
    with _vocabulary_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MASK_THREADS, thread_name_prefix="engine-mask")
        return _pool


class Guide:
    """One generation's grammar state (an llguidance LLMatcher): start() computes the mask of the next token on a
    helper thread, allowed(n) waits for it, consume(token) advances. InvalidRequestError when the grammar does not
    compile for this vocabulary or the matcher fails (a parser limit)."""

    def __init__(self, fmt: ResponseFormat, tokenizer):
        import llguidance
        self.matcher = llguidance.LLMatcher(vocabulary(tokenizer), fmt.grammar, log_level=0)
        self._check("cannot be compiled for this model's vocabulary")
        self._bits = np.full((tokenizer.vocab_size + 31) // 32, -1, dtype=np.int32)
        self._pending = None

    def _check(self, what: str = "failed") -> None:
        if self.matcher.is_error():
            raise _bad(f"the constraint {what}: {self.matcher.get_error()}")

    def _fill(self) -> None:
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)  # releases the GIL

    def start(self) -> None:
        """Compute the next token's mask on a helper thread (call it before the forward whose logits it masks)."""
        self._pending = _mask_pool().submit(self._fill)

    def allowed(self, n: int) -> np.ndarray:
        """The next token's mask over n logits: [n] bool, True where the grammar allows the token."""
        if self._pending is None:
            self._fill()
        else:
            self._pending.result()
            self._pending = None
        self._check()
        return self.unpack(n)

    def unpack(self, n: int) -> np.ndarray:
        """The last mask computed, over n logits (tokens past the vocabulary are not allowed)."""
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little").view(bool)
        return bits[:n] if len(bits) >= n else np.concatenate([bits, np.zeros(n - len(bits), bool)])

    def consume(self, token: int) -> None:
        """Advance past a sampled token (one the mask allowed)."""
        self.matcher.consume_token(int(token))
        self._check()

    @property
    def finished(self) -> bool:
        """The grammar takes nothing more: only an end-of-sequence token could follow."""
        return self.matcher.is_stopped()
