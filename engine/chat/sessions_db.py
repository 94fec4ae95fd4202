"""Sessions that survive a restart: `SessionsDB`, one SQLite file (stdlib sqlite3, WAL) that a SessionStore writes its
sessions through: title and times, system prompt, settings (enable_thinking, context_overflow) and messages (with
reasoning_content). KV caches are not stored: a session read back has an empty cache, and its next turn prefills the
whole conversation.

    db = SessionsDB(default_sessions_db())        # or a path, or ":memory:" (nothing written to disk)
    store = SessionStore(llm, db=db)              # store.infos: the stored sessions; store.get(id) rebuilds a Chat

Where: `--sessions-db PATH` (engine.serve), else `$ENGINE_DATA/sessions.sqlite3`, else
`$XDG_DATA_HOME/engine/sessions.sqlite3`, else `~/.local/share/engine/sessions.sqlite3`: user data, so the XDG data
directory rather than the model cache (~/.cache/engine, which may be wiped).

Each save is one transaction (BEGIN IMMEDIATE … COMMIT, synchronous=FULL): a finished turn's user message and
answer are written together, so a crash (even SIGKILL) mid-answer keeps every completed turn and loses only the turn
in flight. The schema is versioned with PRAGMA user_version (MIGRATIONS upgrades an older file in place); a corrupt
or foreign file, or one from a newer engine, is a SessionStorageError naming the file and the way out.

Threads: one connection (check_same_thread=False) behind a lock. Processes: a second server on the same file works
(WAL: readers never block); a write waits up to busy_timeout (5 s) for the other's, then fails with a
SessionStorageError. Each server lists the sessions stored when it started; the last save of a session wins.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import SessionStorageError

__all__ = ["SessionsDB", "SessionInfo", "StoredSession", "engine_data_dir", "default_sessions_db", "MEMORY",
           "SCHEMA_VERSION"]

MEMORY = ":memory:"
DEFAULT_NAME = "sessions.sqlite3"
SCHEMA_VERSION = 1
SETTINGS = ("enable_thinking", "context_overflow")  # the Chat options a session keeps
FIX = ("move the file away (or delete it) to start afresh, pass --sessions-db PATH to use another file, or "
       "--sessions-db :memory: to keep sessions in memory only")

MIGRATIONS = {  # version k → the script that makes it k + 1
    0: """
CREATE TABLE sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
                       system TEXT, settings TEXT NOT NULL DEFAULT '{}');
CREATE TABLE messages (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
                       role TEXT NOT NULL, content TEXT NOT NULL, reasoning_content TEXT,
                       PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
""",
}


@dataclass
class SessionInfo:
    """A UI conversation's title and times (seconds since the epoch); its Chat lives in the SessionStore under id."""
    id: str
    title: str
    created: float
    updated: float


@dataclass
class StoredSession:
    """What a session's Chat is rebuilt from: its system prompt, settings and the other messages."""
    system: str | None
    settings: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)


def engine_data_dir() -> Path:
    """Where the engine keeps user data: $ENGINE_DATA, else $XDG_DATA_HOME/engine (an absolute path, as the XDG spec
    asks), else ~/.local/share/engine."""
    env = os.environ.get("ENGINE_DATA")
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share") / "engine"


def default_sessions_db() -> Path:
    """The sessions file engine.serve uses without --sessions-db: engine_data_dir() / sessions.sqlite3."""
    return engine_data_dir() / DEFAULT_NAME


class SessionsDB:
    """The sessions of a SessionStore in one SQLite file (path; ":memory:" keeps them in this process only).
    Opening checks the file (SessionStorageError when it is not a sessions database, is from a newer engine or
    stays locked past busy_timeout seconds) and brings an older schema up to SCHEMA_VERSION."""

    def __init__(self, path: str | os.PathLike = MEMORY, busy_timeout: float = 5.0):
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn = None
        try:
            self._conn = self._connect()
            self._migrate()
            self.sessions()  # reads the sessions table: a damaged file fails here, not on the first request
        except sqlite3.Error as e:
            self.close()
            raise self._error(e) from None
        except SessionStorageError:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.path != MEMORY:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SessionStorageError(f"cannot create the folder of the sessions database {self.path}: "
                                          f"{e.strerror or e}; {FIX}") from None
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, each step in one transaction; refuse a newer or a foreign file."""
        with self._transaction() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version > SCHEMA_VERSION:
                raise SessionStorageError(
                    f"the sessions database {self.path} has schema version {version}, written by a newer engine "
                    f"(this one reads up to {SCHEMA_VERSION}): upgrade the engine, pass --sessions-db PATH to use "
                    "another file, or --sessions-db :memory: to keep sessions in memory only")
            if version == 0 and tables:
                raise SessionStorageError(f"{self.path} is an SQLite file but not an engine sessions database (it "
                                          f"has tables {', '.join(sorted(tables))}): {FIX}")
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        c.execute(statement)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _error(self, e: sqlite3.Error) -> SessionStorageError:
        """A sqlite3 error as a SessionStorageError naming the file and what to do."""
        text = str(e)
        if "locked" in text or "busy" in text:
            return SessionStorageError(
                f"the sessions database {self.path} is locked: another process (a second server on the same file?) "
                f"held it for more than {self.busy_timeout:g} s ({text}); stop that process, or pass --sessions-db "
                "PATH to use another file, or --sessions-db :memory: to keep sessions in memory only")
        return SessionStorageError(f"cannot use the sessions database {self.path} ({type(e).__name__}: {text}): "
                                   f"{FIX}")

    @contextmanager
    def _transaction(self):
        """The connection inside BEGIN IMMEDIATE … COMMIT (rolled back on any error), under the lock."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise SessionStorageError(f"the sessions database {self.path} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise self._error(e) from None

    # -- reading --

    def sessions(self) -> dict[str, SessionInfo]:
        """The stored sessions by id, least recently updated first."""
        with self._transaction() as c:
            rows = c.execute("SELECT id, title, created, updated FROM sessions ORDER BY updated, id").fetchall()
        return {r[0]: SessionInfo(*r) for r in rows}

    def load(self, session_id: str) -> StoredSession | None:
        """A stored session's system prompt, settings and messages; None when there is no such session."""
        with self._transaction() as c:
            row = c.execute("SELECT system, settings FROM sessions WHERE id = ?", (session_id,)).fetchone()
            rows = c.execute("SELECT role, content, reasoning_content FROM messages WHERE session_id = ? "
                             "ORDER BY seq", (session_id,)).fetchall()
        if row is None:
            return None
        try:
            settings = json.loads(row[1])
        except ValueError:
            settings = {}
        settings = {k: v for k, v in settings.items() if k in SETTINGS} if isinstance(settings, dict) else {}
        messages = [{"role": r, "content": c} | ({"reasoning_content": rc} if rc else {}) for r, c, rc in rows]
        return StoredSession(row[0], settings, messages)

    # -- writing --

    def save(self, info: SessionInfo, session: StoredSession) -> None:
        """Write a session in one transaction: its row (created or updated) and its messages, of which only those
        past the prefix already stored are written (a turn appends two, undo deletes, regenerate replaces one)."""
        rows = [(m["role"], m["content"], m.get("reasoning_content") or None) for m in session.messages]
        settings = json.dumps({k: v for k, v in session.settings.items() if k in SETTINGS})
        with self._transaction() as c:
            c.execute("INSERT INTO sessions (id, title, created, updated, system, settings) VALUES (?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT (id) DO UPDATE SET title = excluded.title, updated = excluded.updated, "
                      "system = excluded.system, settings = excluded.settings",
                      (info.id, info.title, info.created, info.updated, session.system, settings))
            stored = c.execute("SELECT role, content, reasoning_content FROM messages WHERE session_id = ? "
                               "ORDER BY seq", (info.id,)).fetchall()
            keep = 0
            while keep < min(len(stored), len(rows)) and tuple(stored[keep]) == rows[keep]:
                keep += 1
            c.execute("DELETE FROM messages WHERE session_id = ? AND seq >= ?", (info.id, keep))
            c.executemany("INSERT INTO messages (session_id, seq, role, content, reasoning_content) "
                          "VALUES (?, ?, ?, ?, ?)", [(info.id, keep + i, *r) for i, r in enumerate(rows[keep:])])

    def delete(self, session_id: str) -> None:
        """Forget a session and its messages."""
        with self._transaction() as c:
            c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def close(self) -> None:
        """Close the connection (a WAL file is checkpointed into the database then); later calls raise."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
