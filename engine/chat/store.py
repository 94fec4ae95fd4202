"""`SessionStore`: many chats keyed by session id whose KV caches share one byte budget (the server's UI sessions),
written through to a SessionsDB (sessions_db.py) when given one."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from engine.chat.conversation import Chat
from engine.chat.sessions_db import SETTINGS, SessionInfo, SessionsDB, StoredSession
from engine.errors import InvalidRequestError

__all__ = ["SessionStore"]


class SessionStore:
    """Chats keyed by session id whose KV caches share a byte budget.

    max_bytes: budget for all caches together, counted as Chat.kv_bytes (positions written × bytes per position).
    Before a turn, least recently used idle sessions lose their cache until the turn's expected size fits; after
    it, until everything fits (the session that just answered goes last). An evicted session keeps its messages;
    its next turn recomputes the conversation. chat_options (system, enable_thinking, context_overflow) are the
    defaults for new sessions.

    db: a SessionsDB, or None. Sessions made by create() (and those the db held at start, `infos`) are saved
    there: at the end of each turn, on undo / reset / a new system prompt, and on save(id); drop() deletes them.
    Their Chats are rebuilt from the db on first get(), with an empty cache. Other sessions (get() of a new id,
    put()) stay in memory only.
    """

    def __init__(self, llm, max_bytes: int = 1 << 30, db: SessionsDB | None = None, **chat_options):
        if max_bytes < 0:
            raise InvalidRequestError(f"max_bytes must be >= 0, got {max_bytes}")
        self.llm = llm
        self.max_bytes = int(max_bytes)
        self.chat_options = chat_options
        self.evictions = 0
        self._chats: OrderedDict[str, Chat] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.db = db
        # the saved sessions (a model without a chat template cannot open them: they stay in the db, unlisted)
        self.infos: dict[str, SessionInfo] = db.sessions() if db is not None and llm.template is not None else {}

    def get(self, session_id: str, **chat_options) -> Chat:
        """The session's Chat, created on first use (chat_options override the store's defaults then), or rebuilt
        from the db for a saved session."""
        with self._lock:
            chat = self._chats.get(session_id)
            if chat is None:
                stored = self.db.load(session_id) if self.db is not None and session_id in self.infos else None
                chat = self.put(session_id, self._chat(stored, chat_options))
            return chat

    def create(self, info: SessionInfo, **chat_options) -> Chat:
        """A new saved session (see db) under info.id, its Chat made with chat_options over the store's defaults."""
        chat = Chat(self.llm, **{**self.chat_options, **chat_options})
        if self.db is not None:
            self.db.save(info, self._stored(chat))
        with self._lock:
            self.infos[info.id] = info
            return self.put(info.id, chat)

    def save(self, session_id: str) -> None:
        """Write a saved session's info (title, times) and conversation to the db now (one transaction)."""
        chat, info = self._chats.get(session_id), self.infos.get(session_id)
        if self.db is not None and chat is not None and info is not None:
            self.db.save(info, self._stored(chat))

    def _chat(self, stored: StoredSession | None, chat_options: dict) -> Chat:
        if stored is None:
            return Chat(self.llm, **{**self.chat_options, **chat_options})
        chat = Chat(self.llm, **{**self.chat_options, **stored.settings, "system": stored.system})
        chat.messages.extend(stored.messages)
        return chat

    @staticmethod
    def _stored(chat: Chat) -> StoredSession:
        system = chat.system
        return StoredSession(system, {k: getattr(chat, k) for k in SETTINGS},
                             [dict(m) for m in chat.messages[1 if system is not None else 0:]])

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
        """Forget a session and free its cache (and delete it from the db)."""
        if self.infos.pop(session_id, None) is not None and self.db is not None:
            self.db.delete(session_id)
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
        self._changed(chat)

    def _changed(self, chat: Chat) -> None:
        """A chat's conversation changed (a turn ended, undo, reset, a new system prompt): save it if it is saved."""
        with self._lock:
            sid = next((sid for sid, c in self._chats.items() if c is chat), None)
        info = self.infos.get(sid)
        if info is not None and self.db is not None:
            info.updated = time.time()
            self.db.save(info, self._stored(chat))
