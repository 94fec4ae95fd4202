"""engine.chat: KV reuse across turns, undo/regenerate, sessions under a byte budget, context overflow, the thinking
split, async cancellation, save/load and the REPL. Tiny random models (greedy) except one real-SmolLM2 test."""
import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.chat import Chat, Piece, SessionStore, ThinkSplitter
from engine.errors import ContextOverflowError, InvalidRequestError, TemplateError
from engine.runtime.runner import DirectRunner
from engine.runtime.sampler import SamplingParams
from engine.text.template import ChatTemplate

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"
QWEN3 = TINY / "qwen3" / "model-Q8_0.gguf"
ROOT = Path(__file__).parents[3]
# greedy; the repetition penalty keeps the tiny random model from looping on one token
KW = dict(max_tokens=10, temperature=0.0, repeat_penalty=1.3)


def tiny(n_ctx: int = 256):
    """A fresh tiny Qwen3 LLM (loading takes milliseconds), so tests can wrap its model freely."""
    return engine.load(str(QWEN3), n_ctx=n_ctx)


def use_model(llm, model) -> None:
    """Make llm run model (a wrapper of its own) on a DirectRunner of its own."""
    llm.model, llm.runner = model, DirectRunner(model)


def text_of(pieces) -> str:
    return "".join(p.text for p in pieces)


def fresh_answer(chat: Chat, messages: list[dict], **kw) -> str:
    """The answer after messages, computed from scratch: the same rendering, a new cache, llm.stream."""
    o = {**KW, **kw}
    ids = chat.llm.encode_chat(chat._render(messages, True))
    params = SamplingParams(o["temperature"], repeat_penalty=o["repeat_penalty"])
    return "".join(chat.llm.stream(ids, chat.llm.new_cache(), params, o["max_tokens"]))


class Spy:
    """Wraps a model and remembers which token was last written at each cache position."""

    def __init__(self, model):
        self.model, self.device, self.at, self.calls = model, model.device, {}, 0

    def forward(self, tokens, positions, cache, last_only=False):
        self.calls += 1
        out = self.model.forward(tokens, positions, cache, last_only=last_only)
        self.at.update(zip(map(int, positions), map(int, tokens)))
        return out

    def fed(self, n: int) -> list[int]:
        return [self.at[i] for i in range(n)]


class Scripted:
    """Wraps a model: runs it (the cache fills as usual) but returns logits that make greedy sampling pick the next
    token of a script, one per forward. reset() starts the script again (call it before each turn)."""

    def __init__(self, model, script: list[int], delay_s: float = 0.0):
        self.model, self.device, self.script, self.delay_s, self.i = model, model.device, script, delay_s, 0

    def reset(self):
        self.i = 0

    def forward(self, tokens, positions, cache, last_only=False):
        out = np.asarray(self.model.forward(tokens, positions, cache, last_only=last_only))
        if self.delay_s:
            time.sleep(self.delay_s)
        forced = np.full_like(out, -1e9)
        forced[:, self.script[min(self.i, len(self.script) - 1)]] = 0.0
        self.i += 1
        return forced


def assert_cache_consistent(chat: Chat):
    """chat.cached_ids are the tokens the cache holds, and its keys/values equal a fresh forward over them."""
    cache, ids = chat.cache, chat.cached_ids
    assert cache.length == len(ids)
    spy = chat.llm.model if isinstance(chat.llm.model, Spy) else None
    if spy is not None:
        assert ids == spy.fed(len(ids))
    base = spy.model if spy is not None else chat.llm.model
    ref = chat.llm.new_cache()
    base.forward(np.asarray(ids), np.arange(len(ids)), ref)
    n = len(ids)
    np.testing.assert_allclose(cache.k[:, :, :n], ref.k[:, :, :n], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(cache.v[:, :, :n], ref.v[:, :, :n], rtol=1e-3, atol=1e-3)


# ---- KV reuse -----------------------------------------------------------------------------------------------------


def test_second_turn_reuses_the_cache_and_matches_a_fresh_recompute():
    llm = tiny()
    use_model(llm, Spy(llm.model))
    chat = llm.chat(system="Be brief.")
    first = text_of(chat.send("hello there", **KW))
    turn1 = chat.last_usage
    assert turn1.cached_tokens == 0 and turn1.completion_tokens == KW["max_tokens"]
    fed_after_turn1 = chat.cached_ids
    assert first == chat.messages[-1]["content"] == fresh_answer(chat, chat.messages[:-1])

    second = text_of(chat.send("and what else?", **KW))
    u = chat.last_usage
    assert llm.last_stats is u
    ids2 = llm.encode_chat(chat._render(chat.messages[:-1], True))
    lcp = next(i for i, (a, b) in enumerate(zip(fed_after_turn1 + [-1], ids2)) if a != b)
    assert u.prompt_tokens == len(ids2) and u.cached_tokens == lcp > turn1.prompt_tokens - 1
    assert second == fresh_answer(chat, chat.messages[:-1])
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.cached_ids[:len(ids2)] == ids2
    assert_cache_consistent(chat)


def test_undo_and_regenerate_truncate_and_equal_fresh_runs():
    llm = tiny()
    chat = llm.chat(system="S")
    text_of(chat.send("first question", **KW))
    after_first = list(chat.messages)
    text_of(chat.send("second question", **KW))
    removed = chat.undo()
    assert [m["role"] for m in removed] == ["user", "assistant"] and chat.messages == after_first
    history_ids = llm.encode_chat(chat.render(add_generation_prompt=False))
    assert chat.cached_ids == history_ids[:len(chat.cached_ids)] and chat.cache.length == len(chat.cached_ids)
    assert len(chat.cached_ids) >= len(history_ids) - 8  # truncated to the shared prefix, not recomputed

    third = text_of(chat.send("another question", **KW))
    assert chat.last_usage.cached_tokens >= len(history_ids) - 8
    assert third == fresh_answer(chat, chat.messages[:-1])

    before = chat.messages[-1]["content"]
    again = text_of(chat.regenerate(**KW))
    u = chat.last_usage
    assert again == before == fresh_answer(chat, chat.messages[:-1])
    assert u.cached_tokens == u.prompt_tokens - 1  # only the last prompt token runs again
    assert len(chat.messages) == 5
    assert_cache_consistent(chat)

    chat.reset()
    assert chat.messages == [{"role": "system", "content": "S"}]
    assert chat.undo() == []
    assert text_of(chat.send("first question", **KW)) == after_first[-1]["content"]


def test_closing_the_iterator_early_keeps_the_partial_answer_and_a_consistent_cache():
    llm = tiny()
    use_model(llm, Spy(llm.model))
    chat = llm.chat()
    pieces = []
    for piece in chat.send("hello there", **{**KW, "max_tokens": 20}):
        pieces.append(piece)
        if len(pieces) == 3:
            break
    assert chat.last_usage.finish_reason == "cancelled"
    assert chat.messages[-1] == {"role": "assistant", "content": text_of(pieces)}
    assert_cache_consistent(chat)
    answer = text_of(chat.send("go on", **KW))
    assert answer == fresh_answer(chat, chat.messages[:-1])
    assert_cache_consistent(chat)


def test_bad_requests():
    llm = tiny()
    chat = llm.chat()
    with pytest.raises(InvalidRequestError, match="unknown sampling option"):
        chat.send("hi", temprature=0.5)
    with pytest.raises(InvalidRequestError, match="empty"):
        chat.send("  ")
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        chat.send("hi", max_tokens=0)
    with pytest.raises(InvalidRequestError, match="nothing to regenerate"):
        chat.regenerate()
    with pytest.raises(InvalidRequestError, match="context_overflow"):
        llm.chat(context_overflow="drop")
    llm.template = None
    with pytest.raises(TemplateError, match="no chat template"):
        llm.chat()


# ---- many sessions ------------------------------------------------------------------------------------------------


def test_session_store_evicts_least_recently_used_and_recomputes_transparently():
    llm = tiny()
    reference = SessionStore(llm, max_bytes=1 << 30)
    per_position = reference.get("x").bytes_per_position
    # a first turn here holds 40 positions (31 prompt + 9 fed) and asks for 41; a's second turn holds 75: the
    # budget fits either session alone, never two
    store = SessionStore(llm, max_bytes=80 * per_position, system="S")
    a, b = store.get("a"), store.get("b")
    assert store.get("a") is a and len(store) == 2 and "a" in store

    text_of(a.send("hello from a", **KW))
    assert a.cache is not None and store.used_bytes <= store.max_bytes
    text_of(b.send("hello from b", **KW))
    assert a.cache is None and b.cache is not None and store.evictions == 1  # a was least recently used
    assert store.used_bytes <= store.max_bytes and store.ids() == ["a", "b"]
    assert len(a.messages) == 3  # evicted, not forgotten

    second_a = text_of(a.send("more from a", **KW))
    assert a.last_usage.cached_tokens == 0  # recomputed
    assert b.cache is None and store.evictions == 2 and store.ids() == ["b", "a"]

    ref = reference.get("ref", system="S")  # the same conversation, never evicted
    text_of(ref.send("hello from a", **KW))
    assert text_of(ref.send("more from a", **KW)) == second_a
    assert ref.last_usage.cached_tokens > 0

    store.drop("a")
    assert "a" not in store and store.used_bytes == 0


# ---- context overflow ---------------------------------------------------------------------------------------------


def test_truncate_oldest_drops_whole_old_turns_but_never_the_system_prompt():
    llm = tiny(n_ctx=80)
    chat = llm.chat(system="Sys")
    dropped = 0
    for q in ["one two three", "four five six", "seven eight nine", "ten eleven"]:
        answer = text_of(chat.send(q, **KW))
        u = chat.last_usage
        assert u.prompt_tokens + KW["max_tokens"] <= llm.n_ctx
        assert answer == fresh_answer(chat, chat.messages[:-1])
        dropped += u.dropped_messages
    assert dropped > 0
    assert chat.messages[0] == {"role": "system", "content": "Sys"}
    assert [m["role"] for m in chat.messages[1:]] == ["user", "assistant"] * ((len(chat.messages) - 1) // 2)
    assert chat.messages[-2]["content"] == "ten eleven"

    before = list(chat.messages)
    with pytest.raises(ContextOverflowError, match="last message.*lower max_tokens"):
        text_of(chat.send("word " * 60, **KW))
    assert chat.messages == before  # a failed turn leaves no trace


def test_error_policy_raises_and_keeps_the_conversation():
    llm = tiny(n_ctx=80)
    chat = Chat(llm, system="Sys", context_overflow="error")
    text_of(chat.send("one two three", **KW))
    before = list(chat.messages)
    with pytest.raises(ContextOverflowError, match="80-token context.*truncate_oldest"):
        for q in ["four five six", "seven eight nine", "ten eleven"]:
            before = list(chat.messages)
            text_of(chat.send(q, **KW))
    assert chat.messages == before
    chat.undo()  # still usable
    text_of(chat.send("x", max_tokens=2))
    assert chat.messages[-1]["role"] == "assistant" and chat.last_usage.finish_reason in ("stop", "length")


# ---- thinking -----------------------------------------------------------------------------------------------------


def test_think_splitter_handles_tags_split_across_pieces():
    s = ThinkSplitter()
    out = []
    for chunk in ["<th", "ink>\nLet me ", "see.\n</", "thi", "nk>\n\nHel", "lo <", "b>", "<"]:
        out += s.feed(chunk)
    out += s.flush()
    kinds = {"reasoning": "", "content": ""}
    for p in out:
        kinds[p.kind] += p.text
    assert kinds == {"reasoning": "Let me see.\n", "content": "Hello <b><"}
    assert [p.kind for p in out][0] == "reasoning" and str(Piece("x")) == "x"
    s = ThinkSplitter(reasoning=True)  # the prompt opened the block
    pieces = s.feed("\nhmm</think>ok") + s.flush()
    assert [(p.kind, p.text) for p in pieces] == [("reasoning", "hmm"), ("content", "ok")]


def test_thinking_is_streamed_as_reasoning_and_left_out_of_the_history():
    llm = tiny()
    tok = llm.tokenizer
    enc = lambda s: tok.encode(s, add_special=False)  # noqa: E731
    think, end_think = tok.encode("<think>", parse_special=True), tok.encode("</think>", parse_special=True)
    assert len(think) == len(end_think) == 1
    eos = min(tok.eos_ids)
    script = think + enc("\nLet me see.\n") + end_think + enc("\n\nHello there") + [eos]
    use_model(llm, Scripted(llm.model, script))
    chat = llm.chat(system="S")
    pieces = list(chat.send("hi", max_tokens=40))
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    content = "".join(p.text for p in pieces if p.kind == "content")
    assert reasoning == "Let me see.\n" and content == "Hello there"
    assert all("think>" not in p.text for p in pieces)
    assert chat.last_usage.finish_reason == "stop"
    assert chat.messages[-1] == {"role": "assistant", "content": "Hello there", "reasoning_content": "Let me see."}

    llm.model.reset()
    text_of(chat.send("again", max_tokens=40))
    prompt = chat.render()
    assert "Let me see" not in prompt and "Hello there" in prompt
    assert chat.last_usage.cached_tokens > 0


def test_enable_thinking_reaches_the_template_and_an_open_think_block_starts_as_reasoning():
    llm = tiny()
    source = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
              "{% elif enable_thinking is defined %}<think>\n{% endif %}{% endif %}")
    llm.template = ChatTemplate(source)
    off, on, default = Chat(llm, enable_thinking=False), Chat(llm, enable_thinking=True), Chat(llm)
    for c in (off, on, default):
        c.messages.append({"role": "user", "content": "q"})
    assert off.render().endswith("<think>\n\n</think>\n\n")
    assert on.render().endswith("<think>\n") and default.render().endswith("assistant\n")

    tok = llm.tokenizer
    script = tok.encode("hmm", add_special=False) + tok.encode("</think>", parse_special=True) + \
        tok.encode("ok", add_special=False) + [min(tok.eos_ids)]
    use_model(llm, Scripted(llm.model, script))
    chat = Chat(llm, enable_thinking=True)
    pieces = list(chat.send("q", max_tokens=20))
    runs = []  # consecutive pieces of one kind joined
    for p in pieces:
        if runs and runs[-1][0] == p.kind:
            runs[-1] = (p.kind, runs[-1][1] + p.text)
        else:
            runs.append((p.kind, p.text))
    assert runs == [("reasoning", "hmm"), ("content", "ok")]
    assert chat.messages[-1] == {"role": "assistant", "content": "ok", "reasoning_content": "hmm"}


def test_repl_prints_reasoning_dimmed_on_a_terminal_tagged_otherwise_or_not_at_all():
    import io
    from engine.cli.chat import _Repl
    llm = tiny()
    tok = llm.tokenizer
    script = tok.encode("<think>", parse_special=True) + tok.encode("\nLet me see.\n", add_special=False) + \
        tok.encode("</think>", parse_special=True) + tok.encode("\n\nHello there", add_special=False) + \
        [min(tok.eos_ids)]
    use_model(llm, Scripted(llm.model, script))
    chat = llm.chat()
    shown = {}
    for tty in (False, True):
        for hide in (False, True):
            llm.model.reset()
            out, err = io.StringIO(), io.StringIO()
            repl = _Repl(chat, {"max_tokens": 40}, hide, out=out, err=err)
            repl.tty = tty
            repl.answer(chat.send("hi", max_tokens=40))
            shown[tty, hide] = out.getvalue()
            assert "tok/s" in err.getvalue() and "cached" in err.getvalue()
    assert shown[False, False] == "<think>\nLet me see.\n</think>\n\nHello there\n"
    assert shown[False, True] == shown[True, True] == "Hello there\n"
    assert re.sub(r"\x1b\[[02]m", "", shown[True, False]) == "Let me see.\n\nHello there\n"
    assert shown[True, False].startswith("\x1b[2m")


# ---- async --------------------------------------------------------------------------------------------------------


def test_async_generation_leaves_the_loop_free_and_cancellation_leaves_a_consistent_session():
    llm = tiny()
    spy = Spy(llm.model)
    slow = Scripted(spy, list(range(100, 160)), delay_s=0.03)  # 60 forced tokens, 30 ms each
    use_model(llm, slow)
    chat = llm.chat(system="S")

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        got = []

        async def consume():
            async for piece in chat.send_async("hello there", max_tokens=50):
                got.append(piece)

        tick_task = asyncio.create_task(ticker())
        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        task.cancel()  # lands while the consumer awaits the next piece (a step runs on the worker)
        with pytest.raises(asyncio.CancelledError):
            await task
        # the cancellation completed only once the turn had finished: the session is consistent already
        assert chat.last_usage.finish_reason == "cancelled" and chat.messages[-1]["role"] == "assistant"
        assert chat.cached_ids == spy.fed(chat.cache.length)
        tick_task.cancel()
        return got, ticks

    got, ticks = asyncio.run(scenario())
    assert ticks >= 5  # the event loop ran while tokens were generated
    u = chat.last_usage
    assert u.finish_reason == "cancelled" and 3 <= u.completion_tokens < 50
    assert chat.messages[-1]["role"] == "assistant"
    assert chat.messages[-1]["content"].startswith(text_of(got))
    assert chat.cached_ids == spy.fed(chat.cache.length)  # exactly what was fed
    n_cached = chat.cache.length

    use_model(llm, spy)  # a new send works and matches a fresh recompute of the same conversation
    answer = text_of(chat.send("again", **KW))
    assert chat.last_usage.cached_tokens > 0 and chat.last_usage.cached_tokens <= n_cached
    assert answer == fresh_answer(chat, chat.messages[:-1])
    assert_cache_consistent(chat)

    async def full():
        return [p async for p in chat.send_async("third", **KW)]
    assert text_of(asyncio.run(full())) == fresh_answer(chat, chat.messages[:-1])

    async def cancel_in_the_consumer():
        # here the cancellation lands in the consumer's own code, not in the iterator: the turn stays suspended
        # until the next call on the chat finishes it (as cancelled, partial answer kept)
        got = []

        async def consume():
            async for piece in chat.send_async("fourth", **KW):
                got.append(piece)
                await asyncio.sleep(10)

        task = asyncio.create_task(consume())
        while not got:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return text_of(chat.send("fifth", **KW)), got

    fifth, got = asyncio.run(cancel_in_the_consumer())
    assert chat.messages[-3] == {"role": "assistant", "content": text_of(got)}
    assert fifth == fresh_answer(chat, chat.messages[:-1])
    assert_cache_consistent(chat)


def test_concurrent_async_sessions_give_the_answers_of_sequential_ones():
    llm = tiny()
    store = SessionStore(llm, system="S")

    async def talk(sid, text):
        return text_of([p async for p in store.get(sid).send_async(text, **KW)])

    async def both():
        return await asyncio.gather(talk("a", "hello from a"), talk("b", "something else from b"))

    answers = asyncio.run(both())
    solo = [text_of(Chat(llm, system="S").send(t, **KW)) for t in ("hello from a", "something else from b")]
    assert answers == solo


# ---- save / load --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    llm = tiny()
    chat = llm.chat(system="S", enable_thinking=False)
    text_of(chat.send("hello there", **KW))
    chat.messages[-1]["reasoning_content"] = "kept in the file"
    chat.save(tmp_path / "c.json")
    loaded = Chat.load(tmp_path / "c.json", llm)
    assert loaded.messages == chat.messages and loaded.enable_thinking is False and loaded.system == "S"
    assert loaded.cache is None
    assert text_of(loaded.send("next", **KW)) == text_of(chat.send("next", **KW))
    assert loaded.last_usage.cached_tokens == 0 and chat.last_usage.cached_tokens > 0

    (tmp_path / "bad.json").write_text('{"messages": 3}')
    with pytest.raises(InvalidRequestError, match="not a chat saved"):
        Chat.load(tmp_path / "bad.json", llm)
    with pytest.raises(InvalidRequestError, match="cannot read"):
        Chat.load(tmp_path / "missing.json", llm)


# ---- the REPL -----------------------------------------------------------------------------------------------------


class Pty:
    """A child process on a pseudo-terminal; expect() reads until a regex shows up."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            os.chdir(ROOT)
            os.execvpe(argv[0], argv, {**os.environ, "TERM": "dumb"})
        self.buf = b""

    def expect(self, pattern: bytes, timeout: float = 120) -> bytes:
        end = time.monotonic() + timeout
        while not re.search(pattern, self.buf):
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {pattern!r}; got {self.buf[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the child exited
                    data = b""
                assert data, f"the child exited waiting for {pattern!r}; got {self.buf[-2000:]!r}"
                self.buf += data
        m = re.search(pattern, self.buf)
        seen, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return seen

    def send(self, data: bytes):
        os.write(self.fd, data)

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:  # drain, so the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.05)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError("the REPL did not exit")


REPL = [sys.executable, "-m", "engine.chat", "--model", str(QWEN3), "--threads", "1", "--max-tokens", "8",
        "--repeat-penalty", "1.3", "--system", "S"]


def test_repl_over_a_pty():
    p = Pty(REPL)
    p.expect(rb"/help for commands")
    p.expect(rb"> ")
    p.send(b"hello there\r")
    answer = p.expect(rb"\[prompt: \d+ tokens \(0 cached\), [\d.]+ tok/s \| generated: 8 tokens, [\d.]+ tok/s \| "
                      rb"length\]")
    llm = tiny()
    chat = llm.chat(system="S")
    expected = text_of(chat.send("hello there", max_tokens=8, repeat_penalty=1.3))
    assert expected.encode() in answer.replace(b"\r\n", b"\n")
    p.expect(rb"> ")
    p.send(b"next one\r")
    second = p.expect(rb"\[prompt: \d+ tokens \((\d+) cached\)")
    assert int(re.search(rb"\((\d+) cached\)", second).group(1)) > 0
    p.expect(rb"> ")
    p.send(b"/undo\r")
    p.expect(rb"\(removed 2 message\(s\)\)")
    p.expect(rb"> ")
    p.send(b"/help\r")
    p.expect(rb"/regen")
    p.expect(rb"> ")
    p.send(b"/quit\r")
    assert p.wait() == 0


def test_repl_ctrl_c_stops_the_answer_and_ctrl_d_exits_cleanly():
    p = Pty(REPL[:-6] + ["--max-tokens", "220", "--ctx-size", "256"])
    p.expect(rb"> ")
    p.send(b"hello\r")
    p.expect(rb"hello\r?\n.")  # the answer has started
    p.send(b"\x03")
    p.expect(rb"\| cancelled\]")
    p.expect(rb"> ")
    p.send(b"/regen\r")
    p.expect(rb"\| (length|stop|cancelled)\]")
    p.expect(rb"> ")
    p.send(b"\x04")  # Ctrl-D at the prompt
    assert p.wait() == 0


def test_generate_chat_without_prompt_starts_the_repl():
    r = subprocess.run([sys.executable, "-m", "engine.generate", "--chat", "--model", str(QWEN3), "--threads", "1",
                        "--max-tokens", "4"], input="hi\n/undo\n", cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("> ") and r.stdout.count("> ") == 3  # three prompts: before, after, at EOF
    assert "generated: 4 tokens" in r.stderr and "(removed 2 message(s))" in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine.generate", "--raw", "--model", str(QWEN3)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--prompt is required" in r.stderr


# ---- the real model -----------------------------------------------------------------------------------------------


def test_smollm2_second_turn_reuses_the_first_and_matches_a_fresh_recompute(smollm2_gguf):
    llm = engine.load(str(smollm2_gguf))
    chat = llm.chat()
    text_of(chat.send("What is the capital of France?", max_tokens=4))
    turn1 = chat.last_usage
    fed1 = chat.cached_ids
    assert len(fed1) == turn1.prompt_tokens + turn1.completion_tokens - 1  # the last token is never fed
    second = text_of(chat.send("And of Italy?", max_tokens=4))
    u = chat.last_usage
    ids2 = llm.encode_chat(chat._render(chat.messages[:-1], True))
    assert u.prompt_tokens == len(ids2)
    assert u.cached_tokens >= turn1.prompt_tokens  # turn 1's prompt (and what of its answer re-tokenizes alike)
    assert ids2[:u.cached_tokens] == fed1[:u.cached_tokens]
    fresh = "".join(llm.stream(ids2, llm.new_cache(), SamplingParams(0.0), 4))
    assert second == fresh and second.strip()
