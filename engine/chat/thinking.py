"""Reasoning split: the pieces an answer streams as (`Piece`, kind "content" or "reasoning") and `ThinkSplitter`,
which cuts streamed text at Qwen3-style `<think>` / `</think>` tags even when a tag arrives over several pieces."""
from __future__ import annotations

from dataclasses import dataclass

from engine.text.toolcalls import ToolCall

__all__ = ["THINK_OPEN", "THINK_CLOSE", "Piece", "ThinkSplitter", "opens_thinking"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Piece:
    """A streamed piece of an answer. kind: "content" (the answer) or "reasoning" (inside <think>…</think>).
    logprobs: the engine.runtime.generate.TokenLogprob of the tokens it completes (when asked for with logprobs=k)."""
    text: str
    kind: str = "content"
    logprobs: tuple = ()
    tool_call: ToolCall | None = None  # kind "tool_call" (text ""): a call the answer makes (engine.chat.tools)
    index: int = 0  # kind "tool_call": the call's place among the answer's calls (OpenAI's tool_calls[].index)

    def __str__(self) -> str:
        return self.text


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest tail of text that is a proper prefix of tag (the tag may still be completing)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ThinkSplitter:
    """Splits streamed text into reasoning and content at `<think>` / `</think>`, even when a tag arrives over
    several pieces. The tags themselves are dropped, and so are the newlines right after a tag (Qwen3 writes
    "<think>\\n…\\n</think>\\n\\n"). reasoning=True starts inside a think block (the prompt opened it)."""

    def __init__(self, reasoning: bool = False):
        self.kind = "reasoning" if reasoning else "content"
        self._pending = ""
        self._after_tag = reasoning

    def feed(self, text: str) -> list[Piece]:
        """Pieces completed by text (possibly none while a tag may be starting)."""
        self._pending += text
        out: list[Piece] = []
        while True:
            tag = THINK_CLOSE if self.kind == "reasoning" else THINK_OPEN
            i = self._pending.find(tag)
            if i < 0:
                break
            self._emit(out, self._pending[:i])
            self._pending = self._pending[i + len(tag):]
            self.kind = "content" if self.kind == "reasoning" else "reasoning"
            self._after_tag = True
        cut = len(self._pending) - _partial_tail(self._pending, tag)
        self._emit(out, self._pending[:cut])
        self._pending = self._pending[cut:]
        return out

    def flush(self) -> list[Piece]:
        """What is still held back (a tag prefix that never completed), at the end of the stream."""
        out: list[Piece] = []
        self._emit(out, self._pending)
        self._pending = ""
        return out

    def _emit(self, out: list[Piece], text: str) -> None:
        if self._after_tag:
            text = text.lstrip("\n")
            if text:
                self._after_tag = False
        if text:
            out.append(Piece(text, self.kind))


def opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt leaves a think block open (templates that pre-fill "<think>\\n")."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_OPEN)
