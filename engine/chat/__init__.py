"""Conversations on top of the runtime: `Chat` (conversation.py: a multi-turn chat whose KV cache is reused from
turn to turn, cancellation, save/load, and its per-turn `Usage`), `SessionStore` (store.py: many chats under one
KV byte budget, saved through sessions_db.py's SQLite `SessionsDB`), the `<think>` reasoning split (thinking.py:
`Piece`, `ThinkSplitter`) and tool calls (tools.py: the tools and tool_choice checked, what the template sees, the
grammar of a required call). It imports engine.runtime, engine.text, engine.formats and engine.errors, never
engine.server or engine.cli; `python -m engine.chat` runs the REPL of engine/cli/chat.py (__main__.py)."""
from engine.chat.conversation import Chat, Usage
from engine.chat.store import SessionStore
from engine.chat.thinking import Piece, ThinkSplitter

__all__ = ["Chat", "Piece", "Usage", "SessionStore", "ThinkSplitter"]
