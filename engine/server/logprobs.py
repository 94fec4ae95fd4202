"""Log-probabilities in OpenAI's shapes: chat's `logprobs.content` items, completions' legacy `tokens` /
`token_logprobs` / `top_logprobs` / `text_offset` lists, and the prompt's own (completions' `echo`)."""
import numpy as np

from engine.runtime.generate import TokenLogprob
from engine.runtime.sampler import logprobs


def chat_logprobs(pieces, asked: bool) -> dict | None:
    """A chat choice's logprobs of its pieces (each carrying .logprobs), None when none were asked for."""
    if not asked:
        return None
    return {"content": [t.to_openai() for p in pieces for t in getattr(p, "logprobs", ())], "refusal": None}


def text_logprobs(entries: list[TokenLogprob | None], offset: int, asked: bool) -> dict | None:
    """A completion choice's logprobs of these tokens, whose text starts at character `offset` of the choice's
    text; an entry None is the prompt's first token, which has no log-probability."""
    if not asked:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.token if e else None)
        out["token_logprobs"].append(e.logprob if e else None)
        out["top_logprobs"].append({t.token: t.logprob for t in e.top} if e else None)
        out["text_offset"].append(offset)
        offset += len(e.token) if e else 0
    return out


def prompt_logprobs(llm, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it (raw logits: no penalty applies to a
    prompt) with its `top` alternatives; None for the first token. One forward over the prompt."""
    rows = llm.logits(ids)

    def entry(i: int, lp: float) -> TokenLogprob:
        raw = llm.tokenizer.token_bytes(i)
        return TokenLogprob(i, raw.decode("utf-8", errors="replace"), raw, lp)

    out: list[TokenLogprob | None] = [None]
    for pos in range(1, len(ids)):
        lp, best = logprobs(np.asarray(rows[pos - 1], np.float32), ids[pos], top)
        item = entry(ids[pos], lp)
        out.append(TokenLogprob(item.id, item.token, item.bytes, lp, tuple(entry(i, v) for i, v in best)))
    return out
