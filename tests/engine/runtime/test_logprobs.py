"""Log-probabilities of generated tokens (generate(..., logprobs=k)): each one is log_softmax of the logits the
sampler drew from (after the repetition penalty), checked against torch's log_softmax of our own logits computed
again on a fresh cache; the top alternatives are the k largest, and the pieces' tokens are the generated ones."""
import numpy as np
import pytest
import torch

import engine
from engine.runtime.generate import Piece
from engine.runtime.sampler import _penalize, logprobs
from tiny_models import TINY


@pytest.fixture(scope="module")
def llm():
    return engine.load(str(TINY / "qwen3" / "model-Q8_0.gguf"), n_ctx=128)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_each_token_logprob_is_log_softmax_of_the_logits_it_was_drawn_from(llm, penalty):
    ids = llm.encode_prompt("Once upon a time")
    pieces = list(llm.generate(ids, max_tokens=12, temperature=0.0, repeat_penalty=penalty, repeat_last_n=64,
                               logprobs=5))
    assert all(isinstance(p, Piece) for p in pieces)
    entries = [t for p in pieces for t in p.logprobs]
    generated = [t.id for t in entries]
    assert len(entries) == llm.last_stats.completion_tokens
    rows = llm.logits(ids + generated)  # row i predicts token i + 1
    for n, entry in enumerate(entries):
        history = ids + generated[:n]
        logits = rows[len(history) - 1]
        if penalty != 1.0:
            logits = _penalize(logits, history[-64:], penalty)
        want = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1)
        assert entry.logprob == pytest.approx(float(want[entry.id]), abs=1e-5)
        assert int(torch.argmax(want)) == entry.id  # greedy: the top token was drawn
        top_ids = [t.id for t in entry.top]
        assert len(top_ids) == 5 and top_ids[0] == entry.id
        np.testing.assert_allclose([t.logprob for t in entry.top], torch.topk(want, 5).values.numpy(), atol=1e-5)
        assert entry.bytes == llm.tokenizer.token_bytes(entry.id)
    assert "".join(pieces) == llm.tokenizer.decode(generated)


def test_no_logprobs_asked_gives_plain_text_pieces(llm):
    pieces = list(llm.generate("Once upon a time", max_tokens=4, temperature=0.0))
    assert pieces and all(type(p) is str for p in pieces)


def test_a_stop_string_drops_the_tokens_past_it(llm):
    text = "".join(llm.generate("Once upon a time", max_tokens=16, temperature=0.0, repeat_penalty=1.0))
    stop = text[len(text) // 2:len(text) // 2 + 3]
    pieces = list(llm.generate("Once upon a time", max_tokens=16, temperature=0.0, repeat_penalty=1.0, stop=[stop],
                               logprobs=0))
    kept = b"".join(t.bytes for p in pieces for t in p.logprobs).decode("utf-8", errors="replace")
    assert "".join(pieces) == text[:text.index(stop)]
    assert kept.startswith("".join(pieces)) and all(not t.top for p in pieces for t in p.logprobs)


def test_logprobs_helper_matches_torch_with_masked_tokens():
    logits = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    logits[[3, 7]] = -np.inf  # tokens a constraint forbids
    lp, top = logprobs(logits, 11, 4)
    want = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1)
    assert lp == pytest.approx(float(want[11]), abs=1e-12)
    assert [i for i, _ in top] == torch.topk(want, 4).indices.tolist()
    assert logprobs(logits, 3, 0) == (-np.inf, [])


def test_chat_pieces_carry_logprobs(llm):
    chat = llm.chat()
    pieces = list(chat.send("Hello", max_tokens=6, temperature=0.0, logprobs=2))
    entries = [t for p in pieces for t in p.logprobs]
    assert len(entries) == chat.last_usage.completion_tokens and all(len(t.top) == 2 for t in entries)


@pytest.mark.parametrize("bad", [-1, 21, 1.5, "3"])
def test_logprobs_out_of_range_is_refused(llm, bad):
    with pytest.raises(engine.errors.InvalidRequestError, match="logprobs"):
        list(llm.generate("Hi", max_tokens=2, logprobs=bad))
