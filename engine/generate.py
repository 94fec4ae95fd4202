"""The streaming generate loop. The command line, `python -m engine.generate --prompt TEXT`, is
engine/cli/generate.py."""
import sys
import time
from dataclasses import dataclass

import numpy as np

from engine.errors import ModelFileError
from engine.sampler import Sampler, SamplingParams
from kernels import backend


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


def generate_tokens(model, cache, ids: list[int], params: SamplingParams, max_tokens: int, eos_ids,
                    stats: GenerationStats, where: str = "the model"):
    """Yield sampled token ids after ids. The cache may already hold a prefix of ids; only the rest is run.
    Non-finite logits end generation with ModelFileError naming `where` (the model file).

    Prefill time ends when the first token is sampled; decode time covers the tokens after it. A model that can
    queue a forward and return at once (`submit`, as engine.scheduler.Scheduler) gets the next token's forward
    before the token is yielded, so the caller's work on it (detokenizing, streaming) overlaps that forward; if
    the caller then stops, that forward is still waited for (it writes the cache, which then holds the token).
    """
    sampler = Sampler(params)
    keep = min(cache.length, len(ids) - 1)  # at least one token must run to get logits
    cache.truncate(keep)
    stats.cached_tokens = keep
    history = list(ids)
    t0 = time.perf_counter()
    new = np.asarray(history[keep:])
    logits = model.forward(new, np.arange(keep, keep + len(new)), cache, last_only=True)
    stats.finish_reason = "length"
    for n in range(max_tokens):
        token = sampler(finite_logits(backend.to_host(logits[-1]), where), history)
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
        if n + 1 == max_tokens or cache.length >= cache.max_len:
            yield token
            return
        ahead = queue_forward(model, np.asarray([token]), np.asarray([cache.length]), cache, last_only=True)
        try:
            yield token
        except GeneratorExit:
            ahead.settle()
            raise
        logits = ahead.result()


def finite_logits(logits: np.ndarray, where: str) -> np.ndarray:
    """logits (a host array) if every value is finite, else ModelFileError naming where: NaN or infinite weights
    would otherwise make greedy decoding pick token 0 forever and sampling fail untyped."""
    if not np.isfinite(logits).all():
        raise ModelFileError(f"{where}: the model computed NaN or infinite logits; its weights hold non-finite "
                             "values or the file is damaged: download it again.")
    return logits


class DeferredForward:
    """A forward run when its result is asked for: queue_forward's handle for models that cannot queue one."""

    def __init__(self, run):
        self._run = run

    def result(self):
        return self._run()

    def settle(self) -> None:
        """Nothing ran, nothing to wait for."""


def queue_forward(model, tokens, positions, cache, last_only: bool = False):
    """model.forward(...) as a handle: result() gives the logits, settle() waits for a queued forward without
    its result. Queued at once where the model has `submit`, else deferred until result()."""
    submit = getattr(model, "submit", None)
    if submit is not None:
        return submit(tokens, positions, cache, last_only=last_only)
    return DeferredForward(lambda: model.forward(tokens, positions, cache, last_only=last_only))


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that is the start of some stop string (it may still become one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def stream_text(model, tokenizer, cache, ids, params, max_tokens, stops, stats, where: str = "the model"):
    """Text pieces of the generated tokens: UTF-8 safe, and cut before the first stop string. where: the model
    file, for the error on non-finite logits."""
    from engine.tokenizer import StreamDecoder
    decoder = StreamDecoder(tokenizer, continuation=True)
    pending = ""
    for token in generate_tokens(model, cache, ids, params, max_tokens, tokenizer.eos_ids, stats, where):
        pending += decoder.push(token)
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            stats.finish_reason = "stop"
            if min(hits):
                yield pending[:min(hits)]
            return
        cut = len(pending) - _held_back(pending, stops)
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    pending += decoder.flush()
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    if hits:
        stats.finish_reason = "stop"
        pending = pending[:min(hits)]
    if pending:
        yield pending


if __name__ == "__main__":  # the command line lives in engine/cli/generate.py
    from engine.cli.generate import main
    sys.exit(main())
