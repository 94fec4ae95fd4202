"""The streaming generate loop. The command line, `python -m engine.generate --prompt TEXT`, is
engine/cli/generate.py."""
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from engine.errors import ModelFileError
from engine.runtime.sampler import Sampler, SamplingParams, logprobs
from engine.runtime.structured import Guide


@dataclass
class GenerationStats:
    """What one generation did. finish_reason: "stop" (EOS or a stop string) or "length" (max_tokens or a full
    context)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str | None = None

    @property
    def prefill_tps(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s and self.completion_tokens > 1 else 0.0


class Cancelled(Exception):
    """Raised by the generate loop, before a forward, once its cancel event is set."""


def generate_tokens(runner, cache, ids: list[int], params: SamplingParams, max_tokens: int, eos_ids,
                    stats: GenerationStats, where: str = "the model", *, cancel=None, history: list[int] | None = None,
                    guide=None, logprob_log: list | None = None):
    """Yield sampled token ids after ids, running forwards on runner (an engine.runtime.runner.Runner). The cache may
    already hold a prefix of ids; only the rest is run. Non-finite logits end generation with ModelFileError
    naming `where` (the model file).

    cancel (a threading.Event): when set, Cancelled is raised before the next forward is run or waited for.
    history: a list made to hold ids followed by every sampled token; whatever way the loop ends, the cache holds
    its first cache.length entries (Chat keeps its log of cached ids so).

    Prefill time ends when the first token is sampled; decode time covers the tokens after it. The next token's
    forward is submitted before the token is yielded: a runner that queues it (engine.runtime.scheduler.BatchingRunner)
    runs it while the caller works on the token (detokenizing, streaming); if the caller then stops, that forward
    is still waited for (it writes the cache, which then holds the token).

    guide (an engine.runtime.structured.Guide, for params.response_format): the tokens it forbids are never
    sampled. Each token's mask is computed on a helper thread while the forward that gives its logits runs; when
    the grammar can take nothing more the generation ends there ("stop"), without another forward.

    logprob_log (with params.logprobs set): each token's sampler.logprobs (its log-probability and the
    params.logprobs most likely (id, log-probability) pairs) is appended before the token is yielded.
    """
    sampler = Sampler(params)
    keep = min(cache.length, len(ids) - 1)  # at least one token must run to get logits
    cache.truncate(keep)
    stats.cached_tokens = keep
    history = [] if history is None else history
    history[:] = ids
    t0 = time.perf_counter()
    new = np.asarray(history[keep:])
    _check(cancel)
    if guide is not None:
        guide.start()
    logits = runner.forward(new, np.arange(keep, keep + len(new)), cache, last_only=True)
    stats.finish_reason = "length"
    for n in range(max_tokens):
        allowed = None if guide is None else guide.allowed(logits.shape[-1])
        processed = sampler.processed(finite_logits(logits[-1], where), history, allowed)
        token = sampler.draw(processed)
        now = time.perf_counter()
        if n == 0:
            stats.prefill_s = now - t0
        else:
            stats.decode_s = now - t0 - stats.prefill_s
        if token in eos_ids:
            stats.finish_reason = "stop"
            return
        stats.completion_tokens += 1
        history.append(token)
        if logprob_log is not None and params.logprobs is not None:
            logprob_log.append(logprobs(processed, token, params.logprobs))
        if guide is not None:
            guide.consume(token)
            if guide.finished:
                stats.finish_reason = "stop"
        if n + 1 == max_tokens or cache.length >= cache.max_len or (guide is not None and guide.finished):
            yield token
            return
        ahead = runner.submit(np.asarray([token]), np.asarray([cache.length]), cache, last_only=True)
        if guide is not None:
            guide.start()
        try:
            yield token
            _check(cancel)
        except BaseException:
            ahead.settle()
            raise
        logits = ahead.result()


def _check(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id lists: how much of a cache holding a can serve b."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def finite_logits(logits: np.ndarray, where: str) -> np.ndarray:
    """logits (a host array) if every value is finite, else ModelFileError naming where: NaN or infinite weights
    would otherwise make greedy decoding pick token 0 forever and sampling fail untyped."""
    if not np.isfinite(logits).all():
        raise ModelFileError(f"{where}: the model computed NaN or infinite logits; its weights hold non-finite "
                             "values or the file is damaged: download it again.")
    return logits


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that is the start of some stop string (it may still become one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, as an item of OpenAI's logprobs.content: its id, its text (its bytes
    decoded, U+FFFD for part of a character), its bytes, its logprob and the most likely alternatives (top)."""
    id: int
    token: str
    bytes: bytes
    logprob: float
    top: tuple["TokenLogprob", ...] = ()

    def to_openai(self, with_top: bool = True) -> dict:
        item = {"token": self.token, "logprob": self.logprob, "bytes": list(self.bytes)}
        return item | ({"top_logprobs": [t.to_openai(False) for t in self.top]} if with_top else {})


class Piece(str):
    """A piece of generated text (a str) with the TokenLogprob of each token whose text it completes: what
    generate yields when logprobs are asked for."""

    def __new__(cls, text: str, logprobs=()):
        piece = super().__new__(cls, text)
        piece.logprobs = tuple(logprobs)
        return piece


class _Logprobs:
    """Tokens' log-probabilities waiting for the text that holds them: a token goes with the piece that takes the
    text up to the end of its own (text cut at a stop string drops the tokens past the cut)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.log: list = []  # generate_tokens' logprob_log
        self.waiting: deque = deque()  # (characters decoded up to the token's end, TokenLogprob)
        self.decoded = self.emitted = 0

    def entry(self, token_id: int, logprob: float) -> TokenLogprob:
        raw = self.tokenizer.token_bytes(token_id)
        return TokenLogprob(token_id, raw.decode("utf-8", errors="replace"), raw, logprob)

    def add(self, token: int, chars: int) -> None:
        logprob, top = self.log.pop()
        self.decoded += chars
        self.waiting.append((self.decoded, replace(self.entry(token, logprob),
                                                   top=tuple(self.entry(i, lp) for i, lp in top))))

    def piece(self, text: str) -> Piece:
        self.emitted += len(text)
        done = []
        while self.waiting and self.waiting[0][0] <= self.emitted:
            done.append(self.waiting.popleft()[1])
        return Piece(text, done)


def stream_text(runner, tokenizer, cache, ids, params, max_tokens, stops, stats, where: str = "the model", *,
                cancel=None, history: list[int] | None = None):
    """Text pieces of generate_tokens' tokens (same arguments): UTF-8 safe, and cut before the first stop
    string. With params.logprobs set, each piece is a Piece carrying its tokens' TokenLogprobs."""
    from engine.text.tokenizer import StreamDecoder
    decoder = StreamDecoder(tokenizer, continuation=True)
    guide = None if params.response_format is None else Guide(params.response_format, tokenizer)
    lps = None if params.logprobs is None else _Logprobs(tokenizer)
    piece = str if lps is None else lps.piece
    pending = ""
    for token in generate_tokens(runner, cache, ids, params, max_tokens, tokenizer.eos_ids, stats, where,
                                 cancel=cancel, history=history, guide=guide,
                                 logprob_log=None if lps is None else lps.log):
        text = decoder.push(token)
        pending += text
        if lps is not None:
            lps.add(token, len(text))
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            stats.finish_reason = "stop"
            if min(hits):
                yield piece(pending[:min(hits)])
            return
        cut = len(pending) - _held_back(pending, stops)
        if cut:
            yield piece(pending[:cut])
            pending = pending[cut:]
    pending += decoder.flush()
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    if hits:
        stats.finish_reason = "stop"
        pending = pending[:min(hits)]
    if pending:
        yield piece(pending)
