"""engine.runtime.runner: the generate loop, Chat and LLM talk to any Runner; the direct and the batching runner
give the same greedy tokens; one forward at a time in the process."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.chat import Chat
from engine.runtime.generate import Cancelled, GenerationStats, generate_tokens
from engine.runtime.runner import DirectRunner, Handle, Runner
from engine.runtime.sampler import SamplingParams
from engine.runtime.scheduler import BatchingRunner

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
KW = dict(max_tokens=10, temperature=0.0, repeat_penalty=1.3)


@pytest.fixture(scope="module")
def llm():
    return engine.load(str(TINY), n_ctx=128)


@pytest.fixture
def batching(llm):
    runner = BatchingRunner(llm.model)
    yield runner
    runner.close()


class Done(Handle):
    """A forward that ran at submit."""

    def __init__(self, logits):
        self.logits = logits

    def result(self):
        return self.logits

    def settle(self) -> None:
        pass


class Eager(Runner):
    """A test double: runs every forward at once on the calling thread and records (kind, positions)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, tokens, positions, cache, last_only=False):
        self.calls.append(("forward", [int(p) for p in positions]))
        return self.model.forward(tokens, positions, cache, last_only=last_only)

    def submit(self, tokens, positions, cache, last_only=False):
        self.calls.append(("submit", [int(p) for p in positions]))
        return Done(self.model.forward(tokens, positions, cache, last_only=last_only))

    def describe(self) -> str:
        return "eager test runner"


def tokens_on(runner, llm, prompt, n=8):
    return list(generate_tokens(runner, llm.new_cache(), prompt, SamplingParams(), n, frozenset(),
                                GenerationStats()))


def chat_answers(llm):
    chat = Chat(llm, system="Be brief.")
    answers = ["".join(p.text for p in chat.send(q, **KW)) for q in ("hello there", "and what else?")]
    return answers, chat.cached_ids, chat.last_usage.cached_tokens


def test_direct_and_batching_runners_give_the_same_greedy_tokens(llm, batching):
    served = llm.with_runner(batching)
    prompt = llm.tokenizer.encode("the cat sat")
    assert tokens_on(batching, llm, prompt) == tokens_on(llm.runner, llm, prompt)
    assert list(served.generate("the cat sat", **KW)) == list(llm.generate("the cat sat", **KW))
    assert chat_answers(served) == chat_answers(llm)
    np.testing.assert_allclose(served.logits(prompt), llm.logits(prompt), rtol=1e-5, atol=1e-5)
    batching.leave()


def test_any_runner_drives_the_generate_loop_and_chat(llm):
    eager = Eager(llm.model)
    on_eager = llm.with_runner(eager)
    prompt = llm.tokenizer.encode("the cat sat")
    assert tokens_on(eager, llm, prompt, 4) == tokens_on(llm.runner, llm, prompt, 4)
    n = len(prompt)
    assert eager.calls == [("forward", list(range(n)))] + [("submit", [n + i]) for i in range(3)]
    assert chat_answers(on_eager) == chat_answers(llm)
    assert list(on_eager.generate("one two", **KW)) == list(llm.generate("one two", **KW))


def test_with_runner_shares_the_loaded_model_and_keeps_its_own_stats(llm):
    other = llm.with_runner(Eager(llm.model))
    assert other is not llm and llm.runner is not other.runner and isinstance(llm.runner, DirectRunner)
    assert other.model is llm.model and other.tokenizer is llm.tokenizer and other.template is llm.template
    assert other.n_ctx == llm.n_ctx and other.sampling_defaults == llm.sampling_defaults
    "".join(other.generate("hi", max_tokens=2))
    assert other.last_stats is not llm.last_stats


def test_a_cancelled_loop_stops_before_the_next_forward_and_waits_for_a_queued_one(llm, batching):
    prompt = llm.tokenizer.encode("the cat sat")
    for runner in (llm.runner, batching):
        cancel, history, cache = threading.Event(), [], llm.new_cache()
        tokens = generate_tokens(runner, cache, prompt, SamplingParams(), 8, frozenset(), GenerationStats(),
                                 cancel=cancel, history=history)
        first = next(tokens)
        cancel.set()
        with pytest.raises(Cancelled):
            next(tokens)
        assert history == prompt + [first]
        assert cache.length == len(prompt) + (runner is batching)  # only the batching one had queued it
    batching.leave()


def test_one_forward_at_a_time_in_the_process(llm, batching):
    """The batching runner's thread takes the direct runner's (process-wide) compute lock."""
    prompt = np.asarray(llm.tokenizer.encode("the cat sat"))
    with DirectRunner.compute_lock:
        job = batching.submit(prompt, np.arange(len(prompt)), llm.new_cache(), last_only=True)
        time.sleep(0.1)
        assert not job.done.is_set()
    assert job.result().shape[0] == 1
    batching.leave()


def test_run_async_runs_on_the_runners_own_thread(llm):
    runner = DirectRunner(llm.model)
    names = {runner.run_async(lambda: threading.current_thread().name).result() for _ in range(3)}
    assert len(names) == 1 and names.pop().startswith("engine-runner")
    runner.close()
