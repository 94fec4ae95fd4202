"""Next-token sampling: repetition penalty, temperature, top-k, top-p, min-p; greedy when temperature is 0. And
SamplingParams, the one set of sampling settings that the Python API, the command lines and the server build,
check and default in the same way.

Every setting that SamplingParams accepts gives a valid distribution, however extreme: penalized logits are clamped
to float32's finite range (a penalty of 1e-308 cannot overflow them to inf), and the temperature divides logits
already shifted by their maximum, (logit - max) / temperature <= 0, so no temperature > 0, down to 5e-324, can
make inf - inf: a tiny temperature puts all the probability on the top token (shared among exact ties). Logits that
hold NaN or +inf, or no finite value, come from a broken forward and raise ModelFileError, never numpy's
"Probabilities contain NaN". A negative seed is taken as a 64-bit value (two's complement: -1 is 2**64 - 1).
"""
import argparse
import math
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from engine.errors import InvalidRequestError, ModelFileError
from engine.formats import jsonfile
from engine.runtime import structured
from engine.runtime.structured import ResponseFormat

FLOAT32_MAX = float(np.finfo(np.float32).max)
SEED_MIN, SEED_END = -(1 << 63), 1 << 64  # seeds in [SEED_MIN, SEED_END), taken modulo 2**64
MAX_API_TEMPERATURE = 2.0  # OpenAI's upper bound, kept for request bodies
MAX_API_STOPS = 16  # stop strings one request body may carry
HEAD = 256  # candidates sorted first when top-p or min-p cuts the vocabulary (Sampler._most_likely)


@dataclass(frozen=True)
class _Rule:
    """What a numeric setting accepts: a number (an integer when integer) in [lo, hi], with open ends when lo_open /
    hi_open (None: unbounded); None itself when optional."""
    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def span(self, hi=None) -> str:
        hi = self.hi if hi is None else hi
        return (f"{'(' if self.lo_open else '['}{'-inf' if self.lo is None else self.lo}, "
                f"{'inf' if hi is None else hi}{')' if self.hi_open else ']'}")


RULES = {
    "temperature": _Rule(lo=0),
    "top_k": _Rule(integer=True, lo=1, optional=True),
    "top_p": _Rule(lo=0, hi=1, lo_open=True, optional=True),
    "min_p": _Rule(lo=0, hi=1, hi_open=True, optional=True),
    "repeat_penalty": _Rule(lo=0, lo_open=True),
    "repeat_last_n": _Rule(integer=True, lo=0),
    "seed": _Rule(integer=True, lo=SEED_MIN, hi=SEED_END, hi_open=True, optional=True),
    "max_tokens": _Rule(integer=True, lo=1, optional=True),
    "logprobs": _Rule(integer=True, lo=0, hi=20, optional=True),
}


def _finite(x) -> bool:
    """x is a real number that is neither NaN nor infinite (and fits a float)."""
    try:
        return math.isfinite(x)
    except (TypeError, OverflowError):
        return False


def _shown(value) -> str:
    return repr(value)[:40]


def check_number(name: str, value, rule: _Rule, hi=None):
    """value if it satisfies rule (and is at most hi, when given), else InvalidRequestError naming name, with code
    "invalid_type" (not a number / an integer) or "invalid_value" (NaN, infinite or out of range)."""
    if value is None and rule.optional:
        return value
    kind = Integral if rule.integer else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequestError(f"'{name}' must be {'an integer' if rule.integer else 'a number'}"
                                  f"{' (or null)' if rule.optional else ''}, got {_shown(value)}",
                                  param=name, code="invalid_type")
    hi = rule.hi if hi is None else hi
    low = rule.lo is not None and (value <= rule.lo if rule.lo_open else value < rule.lo)
    high = hi is not None and (value >= hi if rule.hi_open else value > hi)
    if not (rule.integer or _finite(value)) or low or high:
        raise InvalidRequestError(f"'{name}' must be a finite number in {rule.span(hi)}, got {_shown(value)}",
                                  param=name, code="invalid_value")
    return value


def check_stop(name: str, stop) -> tuple[str, ...]:
    """stop (None, a string or a list / tuple of strings) as a tuple of non-empty strings; InvalidRequestError
    naming name otherwise."""
    stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError(f"'{name}' must be a string or a list of strings, got {_shown(stop)}",
                                  param=name, code="invalid_type")
    if not all(stops):
        raise InvalidRequestError(f"'{name}' strings must be non-empty", param=name, code="invalid_value")
    return tuple(stops)


def _flag_type(name: str):
    """The argparse type of field name's flag: its text as the number RULES[name] accepts, else an
    ArgumentTypeError (argparse's "argument --top-p: ..." error, exit status 2)."""
    rule = RULES[name]

    def parse(text: str):
        try:
            return check_number(name, (int if rule.integer else float)(text), rule)
        except (ValueError, InvalidRequestError):
            kind = "an integer" if rule.integer else "a finite number"
            bound = f"in {rule.span()}" if rule.hi is not None else f"{'>' if rule.lo_open else '>='} {rule.lo}"
            raise argparse.ArgumentTypeError(f"must be {kind} {bound}, got {text!r}") from None
    return parse


def _stop_flag(text: str) -> str:
    """The argparse type of --stop: a non-empty string (as check_stop)."""
    if not text:
        raise argparse.ArgumentTypeError("must be a non-empty string")
    return text


@dataclass(frozen=True)
class SamplingParams:
    """One generation's settings. Order of application (as in transformers): repetition penalty over the last
    repeat_last_n tokens, temperature, top-k, top-p, min-p, then a draw. temperature == 0 means greedy.
    seed: any integer in [-2**63, 2**64); a negative one is taken modulo 2**64. max_tokens: None is the rest of
    the context. stop: strings that end the text (never emitted); a single string or a list is kept as a tuple.
    response_format: the constraint the output must satisfy (engine.runtime.structured.ResponseFormat; any form
    structured.response_format reads is compiled to one: {"type": "json_schema", ...}, a Pydantic model, ...), or
    None for free text. logprobs: None, or report each generated token's log-probability with that many (0-20)
    most likely alternatives (engine.runtime.generate.TokenLogprob).

    Built with from_kwargs (Python), from_args (command lines) or from_openai (request bodies) over a model's
    defaults (LLM.sampling_defaults, see model_defaults); the field values are checked here, once, for all."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat | None = None
    logprobs: int | None = None

    def __post_init__(self):
        for name, rule in RULES.items():
            check_number(name, getattr(self, name), rule)
        object.__setattr__(self, "stop", check_stop("stop", self.stop))
        object.__setattr__(self, "response_format", structured.response_format(self.response_format))

    @classmethod
    def from_kwargs(cls, defaults: "SamplingParams", **kwargs) -> "SamplingParams":
        """defaults with the keywords of LLM.generate / Chat.send set (None where a field allows it: e.g. top_k=None
        turns a model's top-k off); InvalidRequestError for an unknown keyword or a bad value."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InvalidRequestError(f"unknown sampling option(s) {unknown}; use {sorted(names)}")
        return replace(defaults, **kwargs)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The sampling flags (--max-tokens, --temperature, ...); each left out keeps the model's default. Their
        values are checked while parsing, by the fields' rules: a bad one is argparse's error naming the flag."""
        group = parser.add_argument_group("sampling", "Each flag left out takes the model's recommended value, "
                                          "else the engine's (README: Sampling defaults).")
        model = "default: the model's"
        flags = [("max_tokens", "N", "tokens to generate, >= 1 (default: the rest of the context)"),
                 ("temperature", "T", f"randomness, >= 0; 0 is greedy ({model})"),
                 ("top_k", "K", f"sample among the K most likely tokens, >= 1 ({model})"),
                 ("top_p", "P", f"sample among the most likely tokens whose probabilities add up to P, in (0, 1] "
                                f"({model})"),
                 ("min_p", "P", f"drop tokens less likely than P x the most likely one, in [0, 1) ({model})"),
                 ("repeat_penalty", "R", f"penalize the tokens of the last --repeat-last-n, > 0; 1 is off ({model})"),
                 ("repeat_last_n", "N", f"how many recent tokens --repeat-penalty looks at, >= 0 ({model})"),
                 ("seed", "N", "random seed for reproducible sampling, a 64-bit integer (default: random)")]
        for name, metavar, text in flags:
            group.add_argument("--" + name.replace("_", "-"), type=_flag_type(name), default=None, metavar=metavar,
                               help=text)
        group.add_argument("--stop", action="append", type=_stop_flag, default=None, metavar="STR",
                           help="stop before this string, never printed (repeatable; default: none)")
        _add_format_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, defaults: "SamplingParams") -> "SamplingParams":
        """defaults with the flags of add_arguments that were given."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        return cls.from_kwargs(defaults, **given)

    @classmethod
    def from_openai(cls, body: dict, defaults: "SamplingParams", n_ctx: int | None = None) -> "SamplingParams":
        """defaults with an OpenAI request body's fields: max_tokens (or max_completion_tokens, at most n_ctx),
        stop (up to 16), temperature (at most 2), top_p, seed, and our top_k, min_p, repeat_penalty, repeat_last_n.
        Absent or null fields keep the default; a bad one is an InvalidRequestError whose param is the field."""
        given = {}
        for name in ("max_completion_tokens", "max_tokens"):  # max_tokens wins when both are set
            if body.get(name) is not None:
                given["max_tokens"] = check_number(name, body[name], RULES["max_tokens"], n_ctx)
        if body.get("temperature") is not None:
            given["temperature"] = check_number("temperature", body["temperature"], RULES["temperature"],
                                                MAX_API_TEMPERATURE)
        for name in ("top_p", "seed", "top_k", "min_p", "repeat_penalty", "repeat_last_n"):
            if body.get(name) is not None:
                given[name] = check_number(name, body[name], RULES[name])
        if body.get("stop") is not None:
            given["stop"] = check_stop("stop", body["stop"])
            if len(given["stop"]) > MAX_API_STOPS:
                raise InvalidRequestError(f"'stop' takes at most {MAX_API_STOPS} strings, got {len(given['stop'])}",
                                          param="stop", code="invalid_value")
        if body.get("response_format") is not None:
            given["response_format"] = structured.response_format(body["response_format"])
        return cls.from_kwargs(defaults, **given)


def _format_flag(kind: str):
    """The argparse type of --json-schema FILE, --grammar FILE (GBNF; Lark when the file ends in .lark) or
    --regex PATTERN: the compiled ResponseFormat, else argparse's error naming the flag (before the model loads)."""
    def parse(text: str) -> ResponseFormat:
        try:
            if kind == "regex":
                return structured.regex(text)
            path = Path(text)
            content = path.read_text(encoding="utf-8")
            if kind == "grammar":
                return structured.grammar(content, "lark" if path.suffix == ".lark" else None)
            return structured.json_schema(jsonfile.loads(content), path.stem)
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror or e}") from None
        except (ValueError, InvalidRequestError) as e:
            raise argparse.ArgumentTypeError(str(e).replace("'response_format': ", "")) from None
    return parse


def _add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """--json-schema, --grammar and --regex (one at most): the output's constraint (SamplingParams.response_format)."""
    group = parser.add_argument_group("structured output", "Constrain the output (README: Structured outputs).")
    one = group.add_mutually_exclusive_group()
    one.add_argument("--json-schema", dest="response_format", type=_format_flag("json_schema"), default=None,
                     metavar="FILE", help="answer with JSON valid against the JSON schema in FILE (default: free text)")
    one.add_argument("--grammar", dest="response_format", type=_format_flag("grammar"), default=None,
                     metavar="FILE", help="answer in the grammar of FILE: GBNF (llama.cpp's), or Lark for a .lark file "
                     "(default: free text)")
    one.add_argument("--regex", dest="response_format", type=_format_flag("regex"), default=None,
                     metavar="PATTERN", help="answer with text that the regular expression matches whole "
                     "(default: free text)")


# A model's recommended settings: GGUF keys (llama.cpp's gguf.Keys.General.SAMPLING_*) and generation_config.json
# names, by field. max_new_tokens / max_length are not read: they cap a demo run (transformers' default max_length
# is 20) rather than recommend an answer length; max_tokens defaults to the rest of the context.
GGUF_SAMPLING_KEYS = {"temperature": "general.sampling.temp", "top_k": "general.sampling.top_k",
                      "top_p": "general.sampling.top_p", "min_p": "general.sampling.min_p",
                      "repeat_penalty": "general.sampling.penalty_repeat",
                      "repeat_last_n": "general.sampling.penalty_last_n"}
HF_SAMPLING_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                    "repeat_penalty": "repetition_penalty"}


def _model_value(field: str, value, where: str, key: str, n_ctx: int):
    """A recommended value in our terms (top_k 0 and penalty_last_n -1 mean off and the whole context, as in
    llama.cpp and transformers; GGUF float32s rounded to their shortest decimal), checked; ModelFileError naming
    where and key when the file holds something else."""
    if isinstance(value, float) and key.startswith("general."):
        value = float(str(np.float32(value)))
    if field == "top_k" and value == 0:
        return None
    if field == "repeat_last_n" and value == -1:
        return n_ctx
    try:
        return check_number(key, value, RULES[field])
    except InvalidRequestError as e:
        raise ModelFileError(f"{where}: {e}; the file's sampling defaults are corrupt. Fix or remove {key}.") from None


def model_defaults(metadata: dict | None, hf_dir: Path | None, n_ctx: int, where: str,
                   registry: dict | None = None) -> SamplingParams:
    """The model's recommended sampling over the engine defaults (SamplingParams()), field by field, the first
    source that gives a field winning: the model file (the GGUF general.sampling.* keys of metadata, None for an
    HF model; else hf_dir's generation_config.json unless its do_sample is false, as transformers, which samples
    only then), then registry (models.toml's `sampling` for the model, from its model card: ModelSource.sampling,
    checked when the registry was read). where: the model file, for errors."""
    if metadata is not None:
        found = {f: (metadata[k], k) for f, k in GGUF_SAMPLING_KEYS.items() if metadata.get(k) is not None}
    else:
        config = _generation_config(hf_dir)
        where = str(hf_dir / "generation_config.json") if hf_dir is not None else where
        found = {f: (config[k], k) for f, k in HF_SAMPLING_KEYS.items() if config.get(k) is not None}
    from_file = {f: _model_value(f, v, where, k, n_ctx) for f, (v, k) in found.items()}
    return SamplingParams(**{**(registry or {}), **from_file})


def _generation_config(hf_dir: Path | None) -> dict:
    """generation_config.json's content when it exists and does not turn sampling off (do_sample false), else {}."""
    path = hf_dir / "generation_config.json" if hf_dir is not None else None
    if path is None or not path.is_file():
        return {}
    config = jsonfile.read(path)
    do_sample = config.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ModelFileError(f"{path}: do_sample must be true or false, got {_shown(do_sample)}; the file is "
                             "corrupt. Fix or remove it.")
    return {} if do_sample is False else config


def _top(logits: np.ndarray) -> float:
    """The largest logit; ModelFileError when the logits hold NaN or +inf, or nothing finite."""
    top = float(logits.max())
    if not math.isfinite(top):
        raise ModelFileError(f"the model produced non-finite logits (max {top}): its weights or the activations "
                             "overflowed. Check the model file (download it again) or try another quantization.")
    return top


def _penalize(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    """logits with each seen token's logit divided by penalty when positive, multiplied when not (a copy),
    clamped to float32's finite range."""
    logits = logits.copy()
    seen = np.unique(np.asarray(history))
    picked = logits[seen]
    with np.errstate(all="ignore"):  # overflows to ±inf are clamped below; 0 stays 0 (0 × inf would be NaN)
        penalized = np.where(picked > 0, picked / penalty, np.where(picked < 0, picked * penalty, picked))
    logits[seen] = np.clip(penalized, -FLOAT32_MAX, FLOAT32_MAX)
    return logits


class Sampler:
    """Draws token ids from logits. One Sampler per generation: it owns the seeded random stream."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % SEED_END)

    def processed(self, logits: np.ndarray, history: list[int], allowed: np.ndarray | None = None) -> np.ndarray:
        """logits: [V] float32 after the repetition penalty over history (token ids so far, prompt + generated) and
        the constraint (allowed: [V] bool, the tokens a constraint allows, structured.Guide.allowed; the others
        get -inf): what the filters of distribution start from, and what log-probabilities are reported of."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        _top(logits)
        if p.repeat_penalty != 1.0 and p.repeat_last_n and history:
            logits = _penalize(logits, history[-p.repeat_last_n:], p.repeat_penalty)
        if allowed is not None:
            if not allowed.any():
                raise InvalidRequestError("'response_format': the constraint allows no token here (the grammar "
                                          "accepts nothing after what was generated)", param="response_format")
            logits = np.where(allowed, logits, np.float32(-np.inf))
        return logits

    def distribution(self, logits: np.ndarray, history: list[int],
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The candidates and their probabilities after every filter: (ids [n] int, probs [n] float64), most
        likely first. logits, history, allowed: as processed."""
        return self.filtered(self.processed(logits, history, allowed))

    def filtered(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """distribution of logits already processed: temperature, top-k, top-p, min-p."""
        p = self.params
        if p.temperature == 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        with np.errstate(all="ignore"):
            scaled = (logits.astype(np.float64) - _top(logits)) / p.temperature  # <= 0: the top token is 0
        if p.top_k is not None and p.top_k < len(scaled):
            top = np.argpartition(-scaled, p.top_k - 1)[:p.top_k]
            order = top[np.argsort(-scaled[top], kind="stable")]
            with np.errstate(under="ignore"):
                probs = np.exp(scaled[order])
            probs /= probs.sum()
            keep = self._keep(probs)
        else:
            order, probs, keep = self._most_likely(scaled)
        return order[:keep], probs[:keep] / probs[:keep].sum()

    def _keep(self, probs: np.ndarray) -> int:
        """How many of the candidates (probs: most likely first) top-p and min-p keep."""
        p, keep = self.params, len(probs)
        if p.top_p is not None and p.top_p < 1:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
        if p.min_p:
            keep = min(keep, max(1, int(np.sum(probs >= p.min_p * probs[0]))))
        return keep

    def _most_likely(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids most likely first, their probabilities over the whole vocabulary, how many top-p / min-p keep),
        as a stable sort of the whole vocabulary would give them (ties by id), sorting only a head of HEAD, 4·HEAD,
        ... candidates until the cut falls inside it, strictly above the head's smallest: nothing outside the head
        could then be kept or tie with what is (a full sort of a 49-150K vocabulary is ~5 ms per token)."""
        with np.errstate(under="ignore"):
            weights = np.exp(scaled)
        total, n = weights.sum(), len(scaled)
        m = HEAD if (self.params.top_p is not None and self.params.top_p < 1) or self.params.min_p else n
        while True:
            if m >= n:
                order = np.argsort(-scaled, kind="stable")
            else:
                head = np.argpartition(-scaled, m - 1)[:m]
                order = head[np.lexsort((head, -scaled[head]))]
            probs = weights[order] / total
            keep = self._keep(probs)
            if m >= n or (keep < m and probs[keep - 1] > probs[-1]):
                return order, probs, keep
            m *= 4

    def __call__(self, logits: np.ndarray, history: list[int], allowed: np.ndarray | None = None) -> int:
        """Draw the next token id. logits: [V] float32; history: token ids so far; allowed: see distribution."""
        return self.draw(self.processed(logits, history, allowed))

    def draw(self, logits: np.ndarray) -> int:
        """Draw a token id from processed logits."""
        ids, probs = self.filtered(logits)
        return int(ids[0]) if len(ids) == 1 else int(ids[self.rng.choice(len(ids), p=probs)])


def logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of token under log_softmax(logits) (float64 of processed float32 logits, as OpenAI
    reports them: after penalties and constraints, before temperature and the top-k/p filters), and the `top` most
    likely (id, log-probability) pairs, most likely first (ties by id)."""
    x = logits.astype(np.float64)
    finite = np.isfinite(x)
    peak = x[finite].max()
    with np.errstate(under="ignore", invalid="ignore"):
        lse = peak + np.log(np.exp(x[finite] - peak).sum())
    lp = np.where(finite, x - lse, -np.inf)
    best = np.argpartition(-lp, top - 1)[:top] if 0 < top < len(lp) else np.arange(len(lp) if top else 0)
    best = best[np.lexsort((best, -lp[best]))]
    return float(lp[token]), [(int(i), float(lp[i])) for i in best]
