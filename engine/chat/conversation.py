"""Multi-turn chat: `llm.chat()` → `Chat`, a conversation whose KV cache is reused from turn to turn.

    chat = llm.chat(system="Be brief.")
    for piece in chat.send("Hi!", max_tokens=64):          # Piece(text, kind): kind "content" | "reasoning"
        print(piece.text, end="")
    chat.last_usage                                         # prompt/cached/completion tokens, prefill/decode s

Each turn renders the whole conversation through the model's chat template, tokenizes it, truncates the session's
KV cache to the longest common prefix of the tokens it already holds and runs the model on the rest only. So a
follow-up question costs its own tokens (plus whatever the template renders differently from what was generated),
and undo / regenerate / a changed system prompt truncate the cache instead of recomputing it.

Also here: `send_async` (generation on a worker thread, cancellable) and save/load. Many chats under one KV byte
budget: store.py's `SessionStore`; the Qwen3-style `<think>…</think>` reasoning split: thinking.py. The REPL,
`python -m engine.chat` (or `python -m engine.generate --chat` without `--prompt`), is engine/cli/chat.py.

Cancellation (`chat.cancel()`, closing the `send` iterator early, cancelling the `send_async` task, Ctrl-C in the
REPL): generation stops before the next token; the partial answer streamed so far stays in `messages` (so `/regen`
and `undo` apply to it), and the cache holds exactly the tokens that were fed. A turn that is cancelled or fails
before its first piece leaves no trace in `messages`.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.chat.thinking import THINK_OPEN, Piece, ThinkSplitter, opens_thinking
from engine.chat.tools import (ToolChoice, ToolSplitter, call_grammar, call_parser, check_tool_choice, check_tools,
                               template_view)
from engine.errors import ContextOverflowError, EngineError, InvalidRequestError, TemplateError
from engine.runtime.generate import Cancelled, GenerationStats, common_prefix, stream_text
from engine.runtime.sampler import SamplingParams
from engine.text.toolcalls import detect_format

__all__ = ["Chat", "Usage"]

OVERFLOW_POLICIES = ("truncate_oldest", "error")
SAVE_FORMAT = "engine-chat"


@dataclass
class Usage(GenerationStats):
    """What one turn did: GenerationStats (prompt_tokens, cached_tokens, completion_tokens, prefill_s, decode_s,
    finish_reason, prefill_tps, decode_tps) plus dropped_messages, the oldest messages removed to fit the context.
    finish_reason: "stop" (end of turn or a stop string), "length" (max_tokens or a full context), "tool_calls"
    (the answer ended with tool calls), "cancelled", or "error"."""
    dropped_messages: int = 0


@dataclass
class _Turn:
    """One send / regenerate in progress."""
    params: SamplingParams
    new: list[dict]  # the messages the turn adds (the user's, or tool results); [] to (re)answer the last one
    choice: ToolChoice = ToolChoice()  # how the answer may call chat.tools
    cancel: threading.Event = field(default_factory=threading.Event)
    gen: weakref.ref | None = None  # the turn's generator, weakly: dropping the iterator closes (cancels) the turn


def render_chat(llm, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                tools: list[dict] | None = None) -> str:
    """messages rendered by llm's chat template as a Chat renders them: reasoning left out (Qwen3's template expects
    history without it), tool calls and results as engine.chat.tools.template_view shows them, enable_thinking
    passed when not None, tools (checked) offered."""
    messages, tools = template_view(messages, tools, llm.template.source)
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return llm.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)


class Chat:
    """A conversation with one model and its own KV cache.

    llm: engine.LLM (with a chat template). system: system prompt (None: none; the template may add its own).
    enable_thinking: passed to the template when not None (Qwen3: False skips the reasoning block).
    context_overflow: what a turn does when prompt + max_tokens exceed llm.n_ctx: "truncate_oldest" drops the
    oldest exchanges (never the system prompt) from `messages`; "error" raises ContextOverflowError. Either way a
    ContextOverflowError is raised when even the system prompt and the last user message do not fit.

    messages: list of {"role", "content"} dicts (assistant answers that reasoned also carry "reasoning_content",
    which is never rendered back into the prompt; those that called tools carry OpenAI's "tool_calls", and the
    results follow as {"role": "tool", "tool_call_id", "name", "content"}). tools: the functions offered (see
    send). last_usage: Usage of the latest turn (finish_reason "tool_calls" when the answer ended with calls).
    A Chat runs one turn at a time; use one Chat per conversation (SessionStore for many).
    """

    def __init__(self, llm, system: str | None = None, enable_thinking: bool | None = None,
                 context_overflow: str = "truncate_oldest"):
        if llm.template is None:
            raise TemplateError("this model has no chat template, so it cannot chat; use llm.generate() with a raw "
                                "prompt, or a model whose tokenizer_config.json / GGUF metadata carries a template.")
        if context_overflow not in OVERFLOW_POLICIES:
            raise InvalidRequestError(f"context_overflow must be one of {OVERFLOW_POLICIES}, got {context_overflow!r}")
        self.llm = llm
        self.enable_thinking = enable_thinking
        self.context_overflow = context_overflow
        self.messages: list[dict] = []
        self.last_usage: Usage | None = None
        self._cache = None           # KVCache (max_len = llm.n_ctx), allocated on the first turn
        self._ids: list[int] = []    # token ids at cache positions 0 .. cache.length-1
        self._peak = 0               # most positions ever written to this cache (pages the OS has committed)
        self._turn: _Turn | None = None
        self._running = False
        self._store = None           # the SessionStore holding this chat, if any
        self._tools: list[dict] | None = None
        self.system = system

    # -- conversation state --

    @property
    def system(self) -> str | None:
        """The system prompt; setting it replaces (or adds, or with None removes) the first message."""
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None

    @system.setter
    def system(self, text: str | None) -> None:
        self._settle_turn()
        if text is not None and not isinstance(text, str):
            raise InvalidRequestError(f"the system prompt must be a string or None, got {type(text).__name__}")
        has = self.system is not None
        if text is None and has:
            del self.messages[0]
        elif text is not None and has:
            self.messages[0] = {"role": "system", "content": text}
        elif text is not None:
            self.messages.insert(0, {"role": "system", "content": text})
        self._trim_cache()
        self._changed()

    @property
    def tools(self) -> list[dict] | None:
        """The functions the model may call (OpenAI's tools list, checked; None: none), rendered by the chat template
        on every turn; send / regenerate / send_tool_results(tools=...) set it too."""
        return self._tools

    @tools.setter
    def tools(self, tools) -> None:
        self._tools = check_tools(tools)

    @property
    def cached_ids(self) -> list[int]:
        """Token ids whose keys/values the cache holds (positions 0 .. len-1); a copy."""
        return list(self._ids)

    @property
    def cache(self):
        """The session's KVCache, or None before the first turn and after eviction."""
        return self._cache

    @property
    def kv_bytes(self) -> int:
        """Bytes of KV cache this chat holds: the most positions ever written × bytes per position (the OS commits
        a cache's pages as positions are first written; truncating does not give them back)."""
        return 0 if self._cache is None else self._peak * self.bytes_per_position

    @property
    def bytes_per_position(self) -> int:
        """KV cache bytes of one position: keys and values (float32) of every layer and KV head."""
        c = self.llm.config
        return 2 * 4 * c.n_layers * c.n_kv_heads * c.head_dim

    def render(self, add_generation_prompt: bool = True) -> str:
        """The conversation as the model sees it (reasoning left out), rendered by the chat template."""
        return self._render(self.messages, add_generation_prompt)

    def undo(self) -> list[dict]:
        """Remove the last exchange (the last user message and everything after it); returns the removed messages,
        [] when there is none. The cache is truncated to what the remaining conversation still shares."""
        self._settle_turn()
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return []
        removed = self.messages[last_user:]
        del self.messages[last_user:]
        self._trim_cache()
        self._changed()
        return removed

    def reset(self) -> None:
        """Forget the conversation, keeping the system prompt."""
        self._settle_turn()
        del self.messages[1 if self.system is not None else 0:]
        self._trim_cache()
        self._changed()

    # -- turns --

    def send(self, text: str, *, tools=None, tool_choice=None, parallel_tool_calls=None,
             **sampling) -> Iterator[Piece]:
        """Add a user message and stream the answer as Pieces; the answer joins `messages` when the stream ends.

        sampling: the keywords of LLM.generate (max_tokens, temperature, top_k, top_p, min_p, repeat_penalty,
        repeat_last_n, seed, stop; defaults: llm.sampling_defaults, max_tokens None being the rest of the context).
        tools (OpenAI's list; sets chat.tools, None keeps it), tool_choice ("auto" (None), "none", "required",
        {"type": "function", "function": {"name"}}) and parallel_tool_calls (None: true): see engine.chat.tools;
        each call comes as a Piece of kind "tool_call" (its tool_call: id, name, arguments as JSON text), and the
        answer's message carries them as OpenAI's "tool_calls".
        Options are checked now; the turn runs as the iterator is consumed. Closing the iterator early cancels the turn (see the module docstring).
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequestError("the message is empty; pass some text to send.")
        return self._start(self._turn_of([{"role": "user", "content": text}], tools, tool_choice, parallel_tool_calls,
                                         sampling))

    def regenerate(self, *, tools=None, tool_choice=None, parallel_tool_calls=None, **sampling) -> Iterator[Piece]:
        """Drop the last answer and stream a new one for the same user message (or tool results; options as in
        send). The cache keeps the prompt, so only the answer is computed again."""
        if not any(m["role"] == "user" for m in self.messages):
            raise InvalidRequestError("nothing to regenerate: send a message first.")
        return self._start(self._turn_of([], tools, tool_choice, parallel_tool_calls, sampling))

    def send_tool_results(self, results: dict, *, tools=None, tool_choice=None, parallel_tool_calls=None,
                          **sampling) -> Iterator[Piece]:
        """Add the results of the last answer's tool calls as "tool" messages and stream the answer that follows
        (options as in send). results: {call id: result}, a result being text or any JSON value (sent as its JSON
        text), in the order the template should show them."""
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        calls = {c["id"]: c["function"]["name"] for c in (last or {}).get("tool_calls") or ()}
        if not isinstance(results, dict) or not results or not calls:
            raise InvalidRequestError("send_tool_results needs {call id: result} for the calls of the last answer"
                                      + ("" if calls else ", and the last answer called no tool"))
        unknown = sorted(set(results) - set(calls))
        if unknown:
            raise InvalidRequestError(f"no call of the last answer has the id(s) {unknown}; its calls: {sorted(calls)}")
        new = [{"role": "tool", "tool_call_id": i, "name": calls[i],
                "content": r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)} for i, r in results.items()]
        return self._start(self._turn_of(new, tools, tool_choice, parallel_tool_calls, sampling))

    def send_async(self, text: str, **sampling) -> AsyncIterator[Piece]:
        """send() as an async iterator: each generation step runs on a worker thread, so the event loop stays free.
        Cancelling the consuming task (or `aclose()`) stops generation before the next token and waits for the
        worker, so the session is consistent when the cancellation completes. Use `contextlib.aclosing` when you
        may stop iterating early."""
        return self._iterate_async(self.send(text, **sampling))

    def regenerate_async(self, **sampling) -> AsyncIterator[Piece]:
        """regenerate() as an async iterator (see send_async)."""
        return self._iterate_async(self.regenerate(**sampling))

    def send_tool_results_async(self, results: dict, **options) -> AsyncIterator[Piece]:
        """send_tool_results() as an async iterator (see send_async)."""
        return self._iterate_async(self.send_tool_results(results, **options))

    def cancel(self) -> None:
        """Stop the running answer before its next token (thread-safe; a no-op when no turn runs)."""
        turn = self._turn
        if turn is not None:
            turn.cancel.set()

    # -- save / load --

    def save(self, path: str | os.PathLike) -> None:
        """Write the conversation (messages and options, tools included; not the cache) as JSON."""
        self._settle_turn()
        data = {"format": SAVE_FORMAT, "version": 1, "model": getattr(getattr(self.llm, "source", None), "id", None),
                "enable_thinking": self.enable_thinking, "context_overflow": self.context_overflow,
                "tools": self.tools, "messages": self.messages}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
            tmp.replace(path)
        except OSError as e:
            raise InvalidRequestError(f"cannot write the chat file {path}: {e.strerror or e}; pick a writable "
                                      "path") from None

    @classmethod
    def load(cls, path: str | os.PathLike, llm) -> Chat:
        """A Chat with the conversation saved at path (by Chat.save); its cache is computed on the next turn."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise InvalidRequestError(f"cannot read the chat file {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise InvalidRequestError(f"{path} is not JSON ({e}); pass a file written by Chat.save") from None
        if not (isinstance(data, dict) and data.get("format") == SAVE_FORMAT
                and isinstance(data.get("messages"), list)):
            raise InvalidRequestError(f"{path} is not a chat saved by Chat.save (no format={SAVE_FORMAT!r} / messages)")
        messages = []
        for i, m in enumerate(data["messages"]):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise InvalidRequestError(f"{path}: message {i} needs string 'role' and 'content'")
            messages.append(dict(m))
        chat = cls(llm, enable_thinking=data.get("enable_thinking"),
                   context_overflow=data.get("context_overflow") or "truncate_oldest")
        chat.messages = messages
        chat.tools = data.get("tools")
        return chat

    # -- internals --

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        turn = self._turn  # a turn whose tool_choice is "none" does not show the tools
        tools = None if turn is not None and turn.choice.mode == "none" else self.tools
        return render_chat(self.llm, messages, add_generation_prompt, self.enable_thinking, tools)

    def _turn_of(self, new: list[dict], tools, tool_choice, parallel_tool_calls, sampling: dict) -> _Turn:
        """A turn adding new messages, its options checked (tools, when given, replace chat.tools)."""
        params = SamplingParams.from_kwargs(self.llm.sampling_defaults, **sampling)
        tools = self.tools if tools is None else check_tools(tools)
        choice = check_tool_choice(tool_choice, parallel_tool_calls, tools)
        if choice.constrained and params.response_format is not None:
            raise InvalidRequestError("a required or named tool_choice constrains the answer to a call; it cannot "
                                      "take a response_format too", param="tool_choice")
        self._settle_turn()
        self._tools = tools
        return _Turn(params, new, choice=choice)

    def _splitter(self, turn: _Turn, prompt: str) -> ToolSplitter:
        """The turn's ToolSplitter; with a required or named tool_choice, the grammar of its calls goes into
        turn.params (a thinking template may reason first)."""
        source, tokenizer = self.llm.template.source, self.llm.tokenizer
        fmt, opened = detect_format(source), opens_thinking(prompt)
        if self.tools and turn.choice.constrained:
            may_think = THINK_OPEN in source and self.enable_thinking is not False
            thinking = "open" if opened else "optional" if may_think else None
            grammar = call_grammar(fmt, self.tools, turn.choice, tokenizer, source, thinking)
            turn.params = replace(turn.params, response_format=grammar)
        return ToolSplitter(ThinkSplitter(reasoning=opened), call_parser(fmt, self.tools, turn.choice),
                            turn.choice.parallel)

    def _fit(self, max_tokens: int | None) -> tuple[str, list[int], int]:
        """Render the conversation for the next answer, dropping the oldest exchanges while prompt + max_tokens
        (None: room for one token) exceed the context (policy "truncate_oldest"). Returns (text, ids, messages
        dropped)."""
        n_ctx, dropped = self.llm.n_ctx, 0
        limit = (f"with max_tokens={max_tokens} that exceeds the {n_ctx}-token context" if max_tokens
                 else f"that leaves no room for an answer in the {n_ctx}-token context")
        max_tokens = max_tokens or 1
        while True:
            text = self._render(self.messages, True)
            ids = self.llm.encode_chat(text)
            if len(ids) + max_tokens <= n_ctx:
                return text, ids, dropped
            first = 1 if self.system is not None else 0
            users = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i > first]
            larger = f"or load the model with a larger n_ctx (it supports up to {self.llm.config.max_context})."
            if not users:
                raise ContextOverflowError(
                    f"the system prompt and the last message take {len(ids)} tokens; {limit}, even with every older "
                    f"turn dropped. Shorten the message or the system prompt, lower max_tokens, {larger}")
            if self.context_overflow == "error":
                raise ContextOverflowError(
                    f"the conversation takes {len(ids)} tokens; {limit}. Undo or reset older turns, lower "
                    f"max_tokens, use context_overflow='truncate_oldest' to drop the oldest turns, {larger}")
            dropped += users[0] - first
            del self.messages[first:users[0]]

    def _start(self, turn: _Turn) -> Iterator[Piece]:
        self._settle_turn()
        gen = self._run(turn)
        turn.gen = weakref.ref(gen)
        self._turn = turn
        return gen

    def _settle_turn(self) -> None:
        """Finish a turn left suspended (its iterator not consumed to the end): it ends as cancelled."""
        turn = self._turn
        gen = turn.gen() if turn is not None else None
        if gen is None:
            self._turn = None
            return
        if gen.gi_running:
            raise InvalidRequestError("this chat is answering right now; wait for the answer, or call cancel() "
                                      "and let the iterator finish, before changing the conversation.")
        turn.cancel.set()
        gen.close()  # runs the turn's cleanup if it had started
        if self._turn is turn:
            self._turn = None

    def _ensure_cache(self):
        if self._cache is None:
            self._cache = self.llm.new_cache()  # max_len = llm.n_ctx; pages committed as they fill
            self._ids, self._peak = [], 0
        return self._cache

    def _drop_cache(self) -> None:
        """Free the KV cache (eviction); the next turn recomputes the conversation."""
        self._cache, self._ids, self._peak = None, [], 0

    def _changed(self) -> None:
        """Tell the SessionStore holding this chat (if any) that the conversation changed, so it saves it."""
        if self._store is not None:
            self._store._changed(self)

    def _trim_cache(self) -> None:
        """Truncate the cache to what the current conversation (rendered without a generation prompt) shares."""
        if self._cache is None:
            return
        keep = 0
        if self.messages:
            try:
                keep = common_prefix(self._ids, self.llm.encode_chat(self._render(self.messages, False)))
            except EngineError:
                keep = 0
        self._cache.truncate(keep)
        del self._ids[keep:]

    def _run(self, turn: _Turn) -> Iterator[Piece]:
        """The body of a turn: fit the prompt, reuse the cache prefix, stream pieces, record the answer."""
        snapshot = list(self.messages)
        if turn.new:
            self.messages += turn.new
        else:
            while self.messages and self.messages[-1]["role"] == "assistant":
                self.messages.pop()
        try:
            text, ids, dropped = self._fit(turn.params.max_tokens)
            splitter = self._splitter(turn, text)
            max_tokens = turn.params.max_tokens or self.llm.n_ctx - len(ids)
            if self._store is not None:
                self._store._begin_turn(self, len(ids) + max_tokens)
            else:
                self._running = True
            cache = self._ensure_cache()
        except BaseException:
            self.messages[:] = snapshot
            self._running = False
            if self._turn is turn:
                self._turn = None
            raise

        keep = common_prefix(self._ids, ids)
        cache.truncate(keep)
        del self._ids[keep:]
        usage = Usage(prompt_tokens=len(ids), dropped_messages=dropped)
        parts: dict[str, list[str]] = {"content": [], "reasoning": [], "tool_call": []}
        # the loop fills self._ids with the prompt and the sampled tokens; the cache holds its first cache.length
        stream = stream_text(self.llm.runner, self.llm.tokenizer, cache, ids, turn.params, max_tokens,
                             list(turn.params.stop), usage, cancel=turn.cancel, history=self._ids)
        finished = False
        carried: list = []  # log-probabilities of text the splitter still holds
        try:
            for chunk in stream:
                carried += getattr(chunk, "logprobs", ())
                for piece in splitter.feed(chunk):
                    if carried:
                        piece, carried = replace(piece, logprobs=tuple(carried)), []
                    parts[piece.kind].append(piece.text)
                    yield piece
                if splitter.done:  # a call came and parallel_tool_calls is false: the answer ends with it
                    break
            for piece in splitter.flush():
                if carried:
                    piece, carried = replace(piece, logprobs=tuple(carried)), []
                parts[piece.kind].append(piece.text)
                yield piece
            finished = True
        except Cancelled:
            usage.finish_reason = "cancelled"
        except (GeneratorExit, KeyboardInterrupt):
            usage.finish_reason = "cancelled"
            raise
        except BaseException:
            usage.finish_reason = "error"
            raise
        finally:
            stream.close()
            del self._ids[cache.length:]  # exactly the tokens whose keys/values were stored
            self._peak = max(self._peak, cache.length)
            content, reasoning = "".join(parts["content"]), "".join(parts["reasoning"]).strip("\n")
            if finished or content or reasoning or splitter.calls:
                answer = {"role": "assistant", "content": content}
                splitter.finish(answer, usage)
                if reasoning:
                    answer["reasoning_content"] = reasoning
                self.messages.append(answer)
            else:  # nothing was streamed: the turn leaves no trace in the conversation
                self.messages[:] = snapshot
            self.last_usage = usage
            self.llm.last_stats = usage
            self._running = False
            if self._turn is turn:
                self._turn = None
            if self._store is not None:
                self._store._end_turn(self)

    async def _iterate_async(self, gen: Iterator[Piece]) -> AsyncIterator[Piece]:
        """Drive a turn iterator one step at a time on the runner's worker thread (Runner.run_async)."""
        done = object()

        running = None  # concurrent.futures.Future of the step in flight
        try:
            while True:
                running = self.llm.runner.run_async(lambda: next(gen, done))
                piece = await asyncio.wrap_future(running)
                running = None
                if piece is done:
                    return
                yield piece
        finally:
            if running is not None and not running.done():  # cancelled during a step: stop it at the next token
                self.cancel()
                while not running.done():
                    try:
                        await asyncio.wrap_future(running)
                    except asyncio.CancelledError:
                        continue  # cancelled again: still wait, the turn must finish before the session is used
                    except BaseException:
                        break
            gen.close()  # no step runs now; finishes the turn (as cancelled) if it did not end
