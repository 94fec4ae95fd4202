"""logprobs on a live server with the official openai client: chat's logprobs/top_logprobs and completions'
logprobs/echo in OpenAI's shapes, streamed and not, equal to what the Python API reports and to log_softmax of
our logits for the prompt (echo); bad values are 400s naming the field."""
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

import engine
from live_server import LiveServer

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
GREEDY = dict(temperature=0, extra_body={"repeat_penalty": 1.0})


@pytest.fixture(scope="module")
def server():
    srv = LiveServer(engine.load(str(TINY), n_ctx=256))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none")


def python_logprobs(llm, prompt, k, max_tokens):
    pieces = list(llm.generate(prompt, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0, logprobs=k))
    return [t for p in pieces for t in p.logprobs]


def test_chat_logprobs_streamed_and_not(server, client):
    msgs = [{"role": "user", "content": "Tell me something."}]
    r = client.chat.completions.create(messages=msgs, model=server.service.model_id, max_tokens=8, logprobs=True,
                                       top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert b"".join(bytes(c.bytes) for c in content).decode(errors="replace") == r.choices[0].message.content
    for c in content:
        assert len(c.top_logprobs) == 3 and c.top_logprobs[0].token == c.token
        assert c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert bytes(c.bytes).decode(errors="replace") == c.token  # a part of a character shows as U+FFFD
    stream = client.chat.completions.create(messages=msgs, model=server.service.model_id, max_tokens=8,
                                            logprobs=True, top_logprobs=3, stream=True, **GREEDY)
    streamed = [c for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    # the second request may reuse the first's cached prefix: a prefill of other length, float32 rounding apart
    np.testing.assert_allclose([c.logprob for c in streamed], [c.logprob for c in content], atol=1e-4)
    plain = client.chat.completions.create(messages=msgs, model=server.service.model_id, max_tokens=4, **GREEDY)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_match_the_python_api(server, client):
    r = client.completions.create(model=server.service.model_id, prompt="Once upon a time", max_tokens=8,
                                  logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    want = python_logprobs(server.service.llm, "Once upon a time", 2, 8)
    assert lp.tokens == [t.token for t in want]
    np.testing.assert_allclose(lp.token_logprobs, [t.logprob for t in want], atol=1e-5)
    assert [list(d) for d in lp.top_logprobs] == [[a.token for a in t.top] for t in want]
    assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]))
    chunks = list(client.completions.create(model=server.service.model_id, prompt="Once upon a time",
                                            max_tokens=8, logprobs=2, stream=True, **GREEDY))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == lp.tokens and offsets == lp.text_offset


def test_echo_scores_the_prompt_with_log_softmax_of_our_logits(server, client):
    llm = server.service.llm
    prompt = "The cat sat on the mat"
    r = client.completions.create(model=server.service.model_id, prompt=prompt, max_tokens=0, echo=True,
                                  logprobs=1, **GREEDY)
    choice = r.choices[0]
    ids = llm.encode_prompt(prompt)
    assert choice.text == prompt and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
    want = torch.log_softmax(torch.from_numpy(llm.logits(ids)).double(), dim=-1)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    for pos in range(1, len(ids)):
        assert choice.logprobs.token_logprobs[pos] == pytest.approx(float(want[pos - 1, ids[pos]]), abs=1e-5)
    both = client.completions.create(model=server.service.model_id, prompt=prompt, max_tokens=4, echo=True,
                                     logprobs=0, **GREEDY)
    assert both.choices[0].text.startswith(prompt)
    assert len(both.choices[0].logprobs.tokens) == len(ids) + both.usage.completion_tokens


@pytest.mark.parametrize("path, body, param", [
    ("/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/completions", {"logprobs": -1}, "logprobs"),
    ("/completions", {"logprobs": True}, "logprobs"),
    ("/completions", {"echo": "yes"}, "echo"),
])
def test_bad_logprobs_fields_are_400s_naming_them(server, client, path, body, param):
    base = {"messages": [{"role": "user", "content": "hi"}]} if path.startswith("/chat") else {"prompt": "hi"}
    with pytest.raises(openai.BadRequestError) as e:
        client.post(path, body=base | {"max_tokens": 2} | body, cast_to=object)
    assert e.value.body["param"] == param
