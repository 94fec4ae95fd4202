"""`SessionStore`: many chats keyed by session id whose KV caches share one byte budget (the server's UI sessions)."""
from __future__ import annotations

import threading
from collections import OrderedDict

from engine.chat.conversation import Chat
from engine.errors import InvalidRequestError

__all__ = ["SessionStore"]


class SessionStore:
    """Chats keyed by session id whose KV caches share a byte budget.

    max_bytes: budget for all caches together, counted as Chat.kv_bytes (positions written × bytes per position).
    Before a turn, least recently used idle sessions lose their cache until the turn's expected size fits; after
    it, until everything fits (the session that just answered goes last). An evicted session keeps its messages;
    its next turn recomputes the conversation. chat_options (system, enable_thinking, context_overflow) are the
    defaults for new sessions.
    """

    def __init__(self, llm, max_bytes: int = 1 << 30, **chat_options):
        if max_bytes < 0:
            raise InvalidRequestError(f"max_bytes must be >= 0, got {max_bytes}")
        self.llm = llm
        self.max_bytes = int(max_bytes)
        self.chat_options = chat_options
        self.evictions = 0
        self._chats: OrderedDict[str, Chat] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()

    def get(self, session_id: str, **chat_options) -> Chat:
        """The session's Chat, created on first use (chat_options override the store's defaults then)."""
        with self._lock:
            chat = self._chats.get(session_id)
            if chat is None:
                chat = self.put(session_id, Chat(self.llm, **{**self.chat_options, **chat_options}))
            return chat

    def put(self, session_id: str, chat: Chat) -> Chat:
        """Adopt a chat (e.g. one from Chat.load) under session_id, replacing any session of that id."""
        with self._lock:
            old = self._chats.pop(session_id, None)
            if old is not None and old is not chat:
                old._store = None
            chat._store = self
            self._chats[session_id] = chat
            return chat

    def drop(self, session_id: str) -> None:
        """Forget a session and free its cache."""
        with self._lock:
            chat = self._chats.pop(session_id, None)
            if chat is not None:
                chat._store = None
                if not chat._running:
                    chat._drop_cache()

    def __contains__(self, session_id) -> bool:
        return session_id in self._chats

    def __len__(self) -> int:
        return len(self._chats)

    def ids(self) -> list[str]:
        """Session ids, least recently used first."""
        with self._lock:
            return list(self._chats)

    @property
    def used_bytes(self) -> int:
        """KV cache bytes held by all sessions."""
        with self._lock:
            return sum(c.kv_bytes for c in self._chats.values())

    def _evict(self, needed: int, spare: Chat | None) -> None:
        """Drop idle caches, least recently used first (spare last, if at all), until used + needed fits."""
        order = [c for c in self._chats.values() if c is not spare] + ([spare] if spare is not None else [])
        for chat in order:
            if self.used_bytes + needed <= self.max_bytes:
                return
            if chat._cache is not None and not chat._running:
                chat._drop_cache()
                self.evictions += 1

    def _begin_turn(self, chat: Chat, positions: int) -> None:
        with self._lock:
            for sid, c in self._chats.items():
                if c is chat:
                    self._chats.move_to_end(sid)
                    break
            chat._running = True  # (so it is not evicted itself)
            expected = max(chat._peak, min(positions, self.llm.n_ctx)) * chat.bytes_per_position
            self._evict(max(0, expected - chat.kv_bytes), spare=None)

    def _end_turn(self, chat: Chat) -> None:
        with self._lock:
            self._evict(0, spare=chat)
