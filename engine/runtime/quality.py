"""How good a model's next-token predictions are on a text: perplexity by llama-perplexity's method, and the KL
divergence of its distributions from a base model's saved ones (a quantized file against its float source).

The method (llama.cpp tools/perplexity/perplexity.cpp, perplexity()), for a context of ctx tokens:

* The text is tokenized as llama-perplexity does (`common_tokenize(ctx, text, add_special=true)`: BOS when the
  model's tokenizer adds one, special tokens written in the text left as text). It needs at least 2 x ctx tokens.
* `chunks`: the ids are cut into len(ids) // ctx non-overlapping chunks of exactly ctx tokens (a tail shorter
  than ctx is dropped); when the tokenizer adds BOS, each chunk's first token is replaced by BOS (the first chunk's
  already is). Each chunk runs from an empty KV cache at positions 0..ctx-1.
* Scored: with first = ctx // 2, the logits at positions first..ctx-2 predict the tokens at first+1..ctx-1, so
  each chunk scores ctx - 1 - first tokens (255 for ctx = 512). NLL = -log softmax(logits)[next token].
* PPL = exp(mean NLL) over every scored token; its standard error by the delta method, as llama-perplexity prints
  it: SE = PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (n - 1)).

Memory stays bounded on any vocabulary: `chunk_logprobs` runs positions 0..first-1 as one forward that keeps
only the last row of logits (last_only), then the scored positions in slices that continue the same cache (it is
causal, so the logits are those of one whole-chunk forward), each slice small enough that its float32 logits and
float64 log-softmax stay within SLICE_BYTES. Forwards go through llm.runner, the runner the generate loop uses.

KL divergence. `--save-logits` keeps, per scored token, the base's TOP_K most likely token ids (int32) and their
log-probs (float16), the log of the remaining probability mass (float16) and the log-prob of the correct token
(float32): 32*4 + 32*2 + 2 + 4 = 198 bytes per scored token, plus the chunks' token ids (4 bytes per token), in
an .npz file (`SavedLogits`). The compared model's distribution Q is reduced to the same K + 1 buckets (the base's
top-K ids, and everything else), both sides' bucket log-probs are rounded to float16 and renormalised, and
KL(P_base || Q) is taken over those buckets (`bucket_kl`). That is a lower bound of the full KL (grouping outcomes
never increases KL divergence), exact when the base's top-K holds all its mass; a model against its own file gives
exactly 0. llama.cpp stores every log-prob (as uint16, ~2 bytes per vocabulary entry per token) instead.
"""
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import ContextOverflowError, InvalidRequestError
from engine.runtime.generate import finite_logits

TOP_K = 32
SLICE_BYTES = 96 * 2**20
BYTES_PER_SLICE_ROW = 32  # per vocabulary entry of a scored row: float32 logits, float64 log-probs and temporaries
FORMAT = "engine-logits-v1"
MIN_CTX = 3  # the smallest chunk that scores a token: first = 1, position 1 predicts token 2


# --- the method ---------------------------------------------------------------------------------------------------


def read_text(path: str) -> str:
    """The UTF-8 text of the file at path; InvalidRequestError for a missing, unreadable, empty or non-UTF-8
    file (the method needs text, not bytes)."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise InvalidRequestError(f"cannot read the text file {path}: {e.strerror or e}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                  "convert it to UTF-8 first.") from None
    if not text.strip():
        raise InvalidRequestError(f"{path} is empty; give a text of at least 2 x ctx tokens.")
    return text


def text_ids(llm, text: str) -> list[int]:
    """Token ids of text as llama-perplexity makes them: BOS when the tokenizer adds one, special tokens not
    parsed. InvalidRequestError when the text is empty or holds a token the model has no embedding for."""
    if not text.strip():
        raise InvalidRequestError("the text is empty; give a text of at least 2 x ctx tokens.")
    ids = llm.tokenizer.encode(text, add_special=True, parse_special=False)
    bad = next((i for i in ids if i >= llm.config.vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"the text tokenizes to id {bad}, outside this model's vocabulary "
                                  f"(0..{llm.config.vocab_size - 1}); remove {llm.tokenizer.decode([bad])!r}.")
    return ids


def check_ctx(ctx: int, max_context: int | None = None) -> None:
    """InvalidRequestError for a ctx below MIN_CTX, ContextOverflowError for one past max_context (the model's
    context; None: not checked)."""
    if ctx < MIN_CTX:
        raise InvalidRequestError(f"ctx must be at least {MIN_CTX} (a chunk scores ctx - 1 - ctx // 2 tokens), "
                                  f"got {ctx}.", param="ctx")
    if max_context is not None and ctx > max_context:
        raise ContextOverflowError(f"ctx {ctx} is larger than the model's context of {max_context} tokens; "
                                   f"use a ctx of at most {max_context}.")


def chunks(ids: Sequence[int], ctx: int, bos_id: int | None = None, n_chunks: int | None = None) -> list[list[int]]:
    """The chunks llama-perplexity evaluates: len(ids) // ctx (at most n_chunks) non-overlapping slices of ctx
    ids, ids[i*ctx:(i+1)*ctx], each with its first id replaced by bos_id when it is not None (pass it when the
    tokenizer adds BOS). InvalidRequestError when ids hold fewer than 2 x ctx tokens, or n_chunks < 1."""
    if len(ids) < 2 * ctx:
        raise InvalidRequestError(f"the text is {len(ids)} tokens; with a ctx of {ctx} it must be at least "
                                  f"{2 * ctx} tokens (2 x ctx). Give a longer text or a smaller ctx.")
    if n_chunks is not None and n_chunks < 1:
        raise InvalidRequestError(f"the number of chunks must be at least 1, got {n_chunks}.", param="chunks")
    count = len(ids) // ctx if n_chunks is None else min(n_chunks, len(ids) // ctx)
    out = [[int(t) for t in ids[i * ctx:(i + 1) * ctx]] for i in range(count)]
    if bos_id is not None:
        for chunk in out:
            chunk[0] = int(bos_id)
    return out


def first_scored(ctx: int) -> int:
    """Position of the first scored logits row in a chunk of ctx (it predicts the token at first + 1)."""
    return ctx // 2


def slice_rows(vocab: int, budget: int = SLICE_BYTES) -> int:
    """How many scored rows one forward may return so that its logits and log-softmax fit in budget bytes."""
    return max(1, budget // (BYTES_PER_SLICE_ROW * vocab))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of each row: logits [n, V] float32 → log-probs [n, V] float64 (float64 so that the sum over a
    large vocabulary and log-probs near 0 lose nothing)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def chunk_logprobs(llm, chunk: Sequence[int], rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Log-probs of the scored positions of one chunk, slice by slice: yields (log-probs [n, V] float64, the
    tokens they predict [n] int64) for consecutive slices of positions first..ctx-2. Positions 0..first-1 run as
    one forward keeping only its last row (last_only); each slice of at most `rows` positions (default
    slice_rows) continues the cache. The chunk's last token is never fed: no scored row needs its output."""
    ctx, first = len(chunk), first_scored(len(chunk))
    rows = rows or slice_rows(llm.config.vocab_size)
    tokens = np.asarray(chunk, dtype=np.int64)
    cache = llm.new_cache(ctx)
    llm.runner.forward(tokens[:first], np.arange(first, dtype=np.int64), cache, last_only=True)
    for lo in range(first, ctx - 1, rows):
        hi = min(lo + rows, ctx - 1)
        logits = finite_logits(llm.runner.forward(tokens[lo:hi], np.arange(lo, hi, dtype=np.int64), cache), llm.where)
        yield log_softmax(logits), tokens[lo + 1:hi + 1]


def score_chunk(llm, chunk: Sequence[int], rows: int | None = None) -> np.ndarray:
    """NLL [ctx - 1 - ctx // 2] float64 of the scored tokens of one chunk (see chunk_logprobs)."""
    parts = [-lp[np.arange(len(t)), t] for lp, t in chunk_logprobs(llm, chunk, rows)]
    return np.concatenate(parts)


def ppl_and_se(nll: np.ndarray) -> tuple[float, float]:
    """(exp(mean NLL), its standard error) as llama-perplexity computes them (delta method on the mean NLL)."""
    nll = np.asarray(nll, dtype=np.float64)
    mean = float(nll.mean())
    ppl = math.exp(mean)
    var = float((nll * nll).mean()) - mean * mean
    se = ppl * math.sqrt(var / (len(nll) - 1)) if len(nll) > 1 and var > 0 else 0.0
    return ppl, se


# --- top-K records and the KL divergence ------------------------------------------------------------------------


def _rest_logprob(lp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log of the mass outside ids, per row: lp [n, V] float64 (overwritten at ids), ids [n, K] → [n] float64."""
    lp[np.arange(len(lp))[:, None], ids] = -np.inf
    top = lp.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(lp - safe).sum(axis=1, keepdims=True)) + safe)[:, 0]


@dataclass
class TopK:
    """Per scored token: ids [N, K] int32 (most likely first), logprobs [N, K] float16 of those ids, rest [N]
    float16 (log of the mass outside them; -inf when none), target [N] float32 (log-prob of the correct token)."""

    ids: np.ndarray
    logprobs: np.ndarray
    rest: np.ndarray
    target: np.ndarray

    @classmethod
    def of(cls, lp: np.ndarray, targets: np.ndarray, k: int = TOP_K) -> "TopK":
        """The top-k record of log-probs lp [n, V] float64 (overwritten) for the correct tokens targets [n]."""
        n, k = len(lp), min(k, lp.shape[1])
        rows = np.arange(n)[:, None]
        ids = np.argpartition(-lp, k - 1, axis=1)[:, :k]
        ids = np.take_along_axis(ids, np.argsort(-lp[rows, ids], axis=1, kind="stable"), axis=1)
        target = lp[np.arange(n), targets].astype(np.float32)
        top = lp[rows, ids].astype(np.float16)
        return cls(ids.astype(np.int32), top, _rest_logprob(lp, ids).astype(np.float16), target)

    @classmethod
    def concat(cls, parts: list["TopK"]) -> "TopK":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "logprobs", "rest", "target")))

    def slice(self, lo: int, hi: int) -> "TopK":
        return TopK(self.ids[lo:hi], self.logprobs[lo:hi], self.rest[lo:hi], self.target[lo:hi])

    def buckets(self) -> np.ndarray:
        """Log-probs over the K ids and the rest: [N, K + 1] float64 (from the stored float16)."""
        return np.concatenate([self.logprobs, self.rest[:, None]], axis=1).astype(np.float64)


def bucket_kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(P || Q) = sum_i p_i (log p_i - log q_i) per row, over buckets: p_log, q_log [n, B] float64 log-probs
    (-inf for an empty bucket), each row renormalised first → [n] float64. Terms with p_i = 0 count 0; a bucket
    with p_i > 0 and q_i = 0 gives inf."""
    def normalised(x):
        top = x.max(axis=1, keepdims=True)
        return x - (np.log(np.exp(x - top).sum(axis=1, keepdims=True)) + top)
    p, q = normalised(p_log), normalised(q_log)
    pr = np.exp(p)
    with np.errstate(invalid="ignore"):
        terms = np.where(pr > 0, pr * (p - q), 0.0)
    return terms.sum(axis=1)


def kl_rows(base: TopK, lp: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Against base's records of the same n tokens, the log-probs lp [n, V] float64 (overwritten) of the model
    under test give: KL(base || ours) over the base's top-K buckets [n], top-1 agreement [n] bool, and the change
    of the correct token's probability (ours - base) [n] float64."""
    rows = np.arange(len(lp))
    top1 = lp.argmax(axis=1) == base.ids[:, 0]
    dp = np.exp(lp[rows, targets]) - np.exp(base.target.astype(np.float64))
    top = lp[rows[:, None], base.ids].astype(np.float16)
    ours = TopK(base.ids, top, _rest_logprob(lp, base.ids).astype(np.float16), base.target)
    return bucket_kl(base.buckets(), ours.buckets()), top1, dp


# --- the saved-logits file ----------------------------------------------------------------------------------------


@dataclass
class SavedLogits:
    """A base model's records on a text (--save-logits): model (its name), ctx, vocab (its vocabulary size),
    ids [n_chunks, ctx] int32 (the chunks as evaluated, BOS included), top: TopK of the n_chunks x (ctx - 1 -
    ctx // 2) scored tokens, chunk by chunk."""

    model: str
    ctx: int
    vocab: int
    ids: np.ndarray
    top: TopK

    def save(self, path: str) -> None:
        """Write an .npz (no pickled objects) at path, whatever its suffix."""
        with open(path, "wb") as f:
            np.savez(f, format=np.array(FORMAT), model=np.array(self.model), ctx=np.int64(self.ctx),
                     vocab=np.int64(self.vocab), ids=self.ids.astype(np.int32), top_ids=self.top.ids,
                     top_logprobs=self.top.logprobs, rest_logprob=self.top.rest, target_logprob=self.top.target)

    @classmethod
    def load(cls, path: str) -> "SavedLogits":
        """Read a file written by save; InvalidRequestError when it is missing or is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["format"]) != FORMAT:
                    raise ValueError(f"format {str(z['format'])!r}")
                top = TopK(z["top_ids"], z["top_logprobs"], z["rest_logprob"], z["target_logprob"])
                saved = cls(str(z["model"]), int(z["ctx"]), int(z["vocab"]), z["ids"], top)
        except OSError as e:
            raise InvalidRequestError(f"cannot read the logits file {path}: {e.strerror or e}.") from None
        except (ValueError, KeyError, EOFError) as e:
            raise InvalidRequestError(f"{path} is not a logits file saved by --save-logits ({FORMAT}): {e}; "
                                      "save one with --save-logits.") from None
        n = saved.ids.shape[0] * (saved.ctx - 1 - first_scored(saved.ctx)) if saved.ids.ndim == 2 else -1
        if n != len(top.ids) or saved.ids.shape[1:] != (saved.ctx,):
            raise InvalidRequestError(f"{path} is damaged: its arrays do not match its ctx; save it again.")
        return saved

    def check(self, evaluated: list[list[int]], ctx: int, vocab: int, where: str = "the logits file") -> None:
        """InvalidRequestError unless this file was saved for these chunks: same ctx, vocabulary and token ids."""
        if ctx != self.ctx:
            raise InvalidRequestError(f"{where} was saved with ctx {self.ctx}, this run uses {ctx}; "
                                      f"use ctx {self.ctx}.")
        if vocab != self.vocab:
            raise InvalidRequestError(f"{where} comes from a model with a {self.vocab}-token vocabulary "
                                      f"({self.model}), this one has {vocab}; compare models that share a tokenizer.")
        if len(evaluated) != len(self.ids):
            raise InvalidRequestError(f"{where} holds {len(self.ids)} chunks, this run evaluates {len(evaluated)}: "
                                      f"another text, or pass {len(self.ids)} chunks.")
        here = np.asarray(evaluated, dtype=np.int64)
        diff = np.argwhere(here != self.ids)
        if len(diff):
            c, i = (int(v) for v in diff[0])
            raise InvalidRequestError(f"{where} was saved from another text or tokenizer: token {i} of chunk {c} is "
                                      f"{int(self.ids[c, i])} there and {int(here[c, i])} here; use the same text "
                                      "and a model with the same tokenizer.")


# --- a whole evaluation -------------------------------------------------------------------------------------------


def _percentile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


@dataclass
class KLStats:
    """KL(base || ours) per scored token (nats) summarised; top1: fraction of tokens where both models' most
    likely token agree; dp_*: ours - base probability of the correct token (mean, 1st and 99th percentile);
    ppl_base: the base's perplexity from the file's correct-token log-probs."""

    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1: float
    dp_mean: float
    dp_p1: float
    dp_p99: float
    ppl_base: float
    base_model: str

    @classmethod
    def of(cls, kl: np.ndarray, top1: np.ndarray, dp: np.ndarray, base: SavedLogits) -> "KLStats":
        return cls(float(kl.mean()), _percentile(kl, 50), _percentile(kl, 99), float(kl.max()),
                   float(top1.mean()), float(dp.mean()), _percentile(dp, 1), _percentile(dp, 99),
                   ppl_and_se(-base.top.target.astype(np.float64))[0], base.model)


@dataclass
class QualityResult:
    """ppl, se: perplexity and its standard error; nll [n] float64 per scored token; chunks, ctx, tokens (fed
    to the model), seconds (forwards and scoring); kl: KLStats when run against a base; saved: the records to
    write with --save-logits when keep_top_k was asked."""

    ppl: float
    se: float
    nll: np.ndarray
    chunks: int
    ctx: int
    tokens: int
    seconds: float
    kl: KLStats | None = None
    saved: SavedLogits | None = None

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (no per-token arrays)."""
        out = {"ppl": self.ppl, "se": self.se, "chunks": self.chunks, "ctx": self.ctx,
               "scored_tokens": int(len(self.nll)), "tokens": self.tokens, "seconds": self.seconds,
               "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else None}
        if self.kl is not None:
            out["kl"] = dict(self.kl.__dict__)
        return out


@dataclass
class _Tally:
    """What evaluate gathers slice by slice."""

    nll: list = field(default_factory=list)
    top: list = field(default_factory=list)
    kl: list = field(default_factory=list)

    def add(self, lp: np.ndarray, targets: np.ndarray, at: int, base: SavedLogits | None, keep_top_k: int) -> None:
        self.nll.append(-lp[np.arange(len(lp)), targets])
        if base is not None:
            self.kl.append(kl_rows(base.top.slice(at, at + len(lp)), lp.copy() if keep_top_k else lp, targets))
        if keep_top_k:
            self.top.append(TopK.of(lp, targets, keep_top_k))


def evaluate(llm, ids: Sequence[int], ctx: int, n_chunks: int | None = None, base: SavedLogits | None = None,
             keep_top_k: int = 0, progress: Callable[[int, int, float, float], None] | None = None,
             rows: int | None = None) -> QualityResult:
    """Perplexity of llm on ids (from text_ids) by llama-perplexity's method with chunks of ctx tokens (at most
    n_chunks; all by default, or base's). base: a SavedLogits to compare against (KL statistics in .kl; its ctx,
    vocabulary and chunk ids must match). keep_top_k > 0: keep the top-k records in .saved (for
    SavedLogits.save). progress(chunk number from 1, chunks, running PPL, tokens/s) after each chunk. rows: the
    scored rows per forward (default slice_rows)."""
    check_ctx(ctx, llm.config.max_context)
    if base is not None and n_chunks is not None and n_chunks != len(base.ids):
        raise InvalidRequestError(f"the logits file holds {len(base.ids)} chunks; ask for {len(base.ids)} "
                                  "or leave the number of chunks out.", param="chunks")
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    todo = chunks(ids, ctx, bos, len(base.ids) if base is not None else n_chunks)
    if base is not None:
        base.check(todo, ctx, llm.config.vocab_size)
    tally, at, t0 = _Tally(), 0, time.perf_counter()
    for c, chunk in enumerate(todo):
        for lp, targets in chunk_logprobs(llm, chunk, rows):
            tally.add(lp, targets, at, base, keep_top_k)
            at += len(lp)
        seconds = time.perf_counter() - t0
        if progress is not None:
            progress(c + 1, len(todo), ppl_and_se(np.concatenate(tally.nll))[0], (c + 1) * ctx / seconds)
    nll = np.concatenate(tally.nll)
    result = QualityResult(*ppl_and_se(nll), nll, len(todo), ctx, len(todo) * ctx, time.perf_counter() - t0)
    if base is not None:
        result.kl = KLStats.of(*(np.concatenate(parts) for parts in zip(*tally.kl)), base)
    if keep_top_k:
        result.saved = SavedLogits(str(llm.source.id), ctx, llm.config.vocab_size,
                                   np.asarray(todo, dtype=np.int32), TopK.concat(tally.top))
    return result


# --- the quantizer's report ---------------------------------------------------------------------------------------

DEFAULT_TEXT = Path(__file__).parent / "texts" / "sotu_1962.txt"  # public domain: texts/SOURCES.md


def report(base: str, other: str, text_path: str | None = None, ctx: int = 512, n_chunks: int | None = None,
           progress: Callable[[str, int, int, float, float], None] | None = None, **load_args) -> dict:
    """How much quality `other` (a quantized file) lost against `base` (its float source): the perplexity of
    both on a text (default DEFAULT_TEXT) and other's KL statistics against base, as JSON-ready values.
    The models are loaded one after the other (load_args: engine.load's threads, device, ...); progress(name,
    chunk, chunks, running PPL, tokens/s) after each chunk."""
    from engine.runtime.llm import load
    text = read_text(str(text_path or DEFAULT_TEXT))
    llm = load(base, n_ctx=ctx, **load_args)
    ref = evaluate(llm, text_ids(llm, text), ctx, n_chunks, keep_top_k=TOP_K, progress=_named(progress, "base"))
    del llm  # one model in memory at a time
    llm = load(other, n_ctx=ctx, **load_args)
    got = evaluate(llm, text_ids(llm, text), ctx, base=ref.saved, progress=_named(progress, "quantized"))
    return {"text": str(text_path or DEFAULT_TEXT.name), "base": {"model": str(base), **ref.to_dict()},
            "quantized": {"model": str(other), **got.to_dict()}}


def _named(progress, name: str):
    return None if progress is None else (lambda *args: progress(name, *args))
