"""engine.runtime.scheduler's BatchingRunner with the generate loop: a token's next forward is queued before the token
reaches the caller, runs while the caller holds the token, and is waited for when the caller stops there."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.chat import Chat
from engine.runtime.generate import GenerationStats, generate_tokens
from engine.runtime.sampler import SamplingParams
from engine.runtime.scheduler import BatchingRunner

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen2" / "model-Q8_0.gguf"


@pytest.fixture(scope="module")
def tiny():
    return engine.load(str(TINY), n_ctx=64)


@pytest.fixture
def scheduler(tiny):
    s = BatchingRunner(tiny.model)
    yield s
    s.close()


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_next_forward_runs_while_the_caller_holds_the_token(tiny, scheduler):
    prompt = tiny.tokenizer.encode("the cat sat")
    expected = list(generate_tokens(tiny.runner, tiny.new_cache(), prompt, SamplingParams(), 6, frozenset(),
                                    GenerationStats()))
    cache = tiny.new_cache()
    tokens = generate_tokens(scheduler, cache, prompt, SamplingParams(), 6, frozenset(), GenerationStats())
    got = [next(tokens)]
    wait_for(lambda: cache.length == len(prompt) + 1)  # token 0's forward ran with the generator paused
    got += list(tokens)
    assert got == expected
    assert cache.length == len(prompt) + 5  # the last token is never fed
    scheduler.leave()


def test_a_caller_that_stops_waits_for_the_queued_forward(tiny, scheduler):
    prompt = tiny.tokenizer.encode("the cat sat")
    cache = tiny.new_cache()
    tokens = generate_tokens(scheduler, cache, prompt, SamplingParams(), 6, frozenset(), GenerationStats())
    next(tokens)
    steps = scheduler.steps
    tokens.close()
    assert scheduler.steps == steps + 1 and cache.length == len(prompt) + 1  # ran and stored before close returned
    scheduler.leave()


def test_chat_on_the_scheduler_keeps_its_log_equal_to_the_cache(tiny, scheduler):
    """A turn cut short by a stop string leaves the queued token in the cache; the log of fed ids says so, and the
    next turn still matches the same conversation run without the scheduler."""
    served = tiny.with_runner(scheduler)
    chat, alone = Chat(served), Chat(tiny)
    first = "".join(p.text for p in chat.send("Say something.", max_tokens=8, stop=[" "]))
    assert first == "".join(p.text for p in alone.send("Say something.", max_tokens=8, stop=[" "]))
    assert len(chat.cached_ids) == chat.cache.length
    second = "".join(p.text for p in chat.send("And more.", max_tokens=8))
    assert second == "".join(p.text for p in alone.send("And more.", max_tokens=8))
    scheduler.leave()


def test_parallel_callers_get_their_own_greedy_tokens(tiny, scheduler):
    prompts = [tiny.tokenizer.encode(t) for t in ("the cat", "a dog ran", "one two three four")]
    expected = [list(generate_tokens(tiny.runner, tiny.new_cache(), p, SamplingParams(), 8, frozenset(),
                                     GenerationStats())) for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = list(generate_tokens(scheduler, tiny.new_cache(), prompts[i], SamplingParams(), 8, frozenset(),
                                      GenerationStats()))
        scheduler.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    assert scheduler.max_rows_per_step >= 2
    assert np.all([len(g) > 0 for g in got])
