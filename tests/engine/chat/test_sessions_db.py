"""engine.chat.sessions_db: a SessionStore written through to SQLite. Round trips (a store reopened on the same file
rebuilds each Chat with an empty cache, and its next turn equals the in-memory conversation's), undo / regenerate /
reset / a new system prompt saved, :memory:, the schema version, and the typed errors for corrupt, foreign, newer
and locked files. The SIGKILL test is tests/engine/server/test_sessions_restart.py."""
import sqlite3
import time
from pathlib import Path

import pytest

import engine
from engine.chat import Chat, SessionStore
from engine.chat.sessions_db import (MEMORY, MIGRATIONS, SCHEMA_VERSION, SessionInfo, SessionsDB, StoredSession,
                                     default_sessions_db, engine_data_dir)
from engine.errors import SessionStorageError

QWEN3 = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3" / "model-Q8_0.gguf"
KW = dict(max_tokens=6, temperature=0.0, repeat_penalty=1.3)


@pytest.fixture(scope="module")
def llm():
    return engine.load(str(QWEN3), n_ctx=256)


def text_of(pieces) -> str:
    return "".join(p.text for p in pieces)


def new_info(sid: str = "s1", title: str = "New chat") -> SessionInfo:
    now = time.time()
    return SessionInfo(sid, title, now, now)


def reopened(path: Path, llm) -> SessionStore:
    """A store on a fresh connection to the file, as a restarted server makes."""
    return SessionStore(llm, db=SessionsDB(path))


def test_a_session_round_trips_and_its_next_turn_recomputes_the_conversation(tmp_path, llm):
    path = tmp_path / "s.sqlite3"
    store = SessionStore(llm, db=SessionsDB(path))
    chat = store.create(new_info(title="Trip"), system="Be brief.", enable_thinking=False)
    text_of(chat.send("Hello there", **KW))
    store.infos["s1"].title = "Renamed"
    store.save("s1")
    store.db.close()

    again = reopened(path, llm)
    assert list(again.infos) == ["s1"] and again.infos["s1"].title == "Renamed"
    rebuilt = again.get("s1")
    assert rebuilt.messages == chat.messages and rebuilt.system == "Be brief."
    assert rebuilt.enable_thinking is False and rebuilt.context_overflow == "truncate_oldest"
    assert rebuilt.cache is None and again.used_bytes == 0
    in_memory = Chat(llm, system="Be brief.", enable_thinking=False)
    in_memory.messages = [dict(m) for m in chat.messages]
    expected = text_of(in_memory.send("And then?", **KW))
    assert text_of(rebuilt.send("And then?", **KW)) == expected
    usage = rebuilt.last_usage
    assert usage.cached_tokens == 0 and usage.prompt_tokens == in_memory.last_usage.prompt_tokens
    assert reopened(path, llm).get("s1").messages == rebuilt.messages  # the new turn was saved too


def stored_messages(path: Path, llm) -> list[dict]:
    return reopened(path, llm).get("s1").messages


def test_undo_regenerate_reset_and_the_system_prompt_are_saved(tmp_path, llm):
    path = tmp_path / "s.sqlite3"
    store = SessionStore(llm, db=SessionsDB(path))
    chat = store.create(new_info())
    text_of(chat.send("One", **KW))
    text_of(chat.send("Two", **KW))
    assert stored_messages(path, llm) == chat.messages and len(chat.messages) == 4
    text_of(chat.regenerate(**{**KW, "temperature": 1.0, "seed": 7}))
    assert stored_messages(path, llm) == chat.messages and len(chat.messages) == 4
    chat.undo()
    assert stored_messages(path, llm) == chat.messages and len(chat.messages) == 2
    chat.system = "Answer in French."
    assert stored_messages(path, llm)[0] == {"role": "system", "content": "Answer in French."}
    chat.reset()
    assert stored_messages(path, llm) == [{"role": "system", "content": "Answer in French."}]
    chat.system = None
    assert stored_messages(path, llm) == [] and reopened(path, llm).get("s1").system is None


def test_a_cancelled_answer_is_saved_as_far_as_it_streamed(tmp_path, llm):
    path = tmp_path / "s.sqlite3"
    store = SessionStore(llm, db=SessionsDB(path))
    chat = store.create(new_info())
    turn = chat.send("Tell me a long story", **{**KW, "max_tokens": 50})
    first = next(turn).text
    turn.close()
    assert chat.last_usage.finish_reason == "cancelled"
    assert stored_messages(path, llm) == chat.messages and chat.messages[1]["content"].startswith(first)


def test_reasoning_unicode_and_settings_round_trip(tmp_path):
    db = SessionsDB(tmp_path / "s.sqlite3")
    messages = [{"role": "user", "content": "héllo 👋\x00 nul"},
                {"role": "assistant", "content": "hi", "reasoning_content": "Let me think.\nOK"},
                {"role": "user", "content": ""}, {"role": "assistant", "content": "again"}]
    settings = {"enable_thinking": True, "context_overflow": "error", "unknown": 1}
    db.save(new_info(), StoredSession("sys ✓", settings, messages))
    got = db.load("s1")
    assert got.messages == messages and got.system == "sys ✓"
    assert got.settings == {"enable_thinking": True, "context_overflow": "error"}  # unknown keys are not kept
    db.save(new_info(), StoredSession(None, {}, messages[:1]))  # a shorter conversation replaces the tail
    assert db.load("s1").messages == messages[:1] and db.load("s1").system is None
    assert db.load("nope") is None


def test_drop_deletes_the_session_and_its_messages(tmp_path, llm):
    path = tmp_path / "s.sqlite3"
    store = SessionStore(llm, db=SessionsDB(path))
    text_of(store.create(new_info("a")).send("Hi", **KW))
    store.create(new_info("b"))
    store.drop("a")
    assert "a" not in store.infos and list(reopened(path, llm).infos) == ["b"]
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_only_created_sessions_are_saved(tmp_path, llm):
    """get() of a new id (the API's pooled caches, "api:N") stays in memory."""
    path = tmp_path / "s.sqlite3"
    store = SessionStore(llm, db=SessionsDB(path))
    text_of(store.get("api:0").send("Hi", **KW))
    assert reopened(path, llm).infos == {} and store.infos == {}


def test_memory_opts_out_of_the_file(tmp_path, llm, monkeypatch):
    monkeypatch.setenv("ENGINE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    store = SessionStore(llm, db=SessionsDB(MEMORY))
    text_of(store.create(new_info()).send("Hi", **KW))
    assert store.db.load("s1").messages == store.get("s1").messages
    assert SessionsDB(MEMORY).sessions() == {}  # each :memory: database is its own
    assert list(tmp_path.iterdir()) == []
    plain = SessionStore(llm)  # no db at all: sessions are listed all the same
    plain.create(new_info())
    plain.save("s1")
    assert list(plain.infos) == ["s1"]


def test_the_schema_is_versioned_and_the_journal_is_wal(tmp_path):
    path = tmp_path / "deep" / "er" / "s.sqlite3"  # missing folders are made
    SessionsDB(path).close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"sessions", "messages"}
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))  # a step from every older version
    SessionsDB(path).close()  # opening a current file again changes nothing


def assert_storage_error(path: Path, *words: str) -> str:
    with pytest.raises(SessionStorageError) as e:
        SessionsDB(path, busy_timeout=0.2)
    message = str(e.value)
    assert str(path) in message and "--sessions-db PATH" in message and "--sessions-db :memory:" in message
    for word in words:
        assert word in message
    return message


def test_a_corrupt_file_is_a_typed_error_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not a database, just some text " * 200)
    assert_storage_error(path, "not a database")
    assert path.read_bytes().startswith(b"this is not")  # left as it was
    damaged = tmp_path / "damaged.sqlite3"
    db = SessionsDB(damaged)
    for i in range(300):
        db.save(new_info(f"s{i}", "x" * 500), StoredSession(None))
    db.close()
    data = bytearray(damaged.read_bytes())
    data[4096:len(data)] = b"\xff" * (len(data) - 4096)  # every page but the first overwritten
    damaged.write_bytes(bytes(data))
    assert_storage_error(damaged, "damaged.sqlite3")


def test_a_foreign_sqlite_file_and_a_newer_schema_are_refused(tmp_path):
    foreign = tmp_path / "other.sqlite3"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
    assert_storage_error(foreign, "not an engine sessions database", "notes")
    newer = tmp_path / "newer.sqlite3"
    SessionsDB(newer).close()
    with sqlite3.connect(newer) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_storage_error(newer, "newer engine", f"schema version {SCHEMA_VERSION + 1}")


def test_a_second_process_on_the_file_shares_it_and_a_held_lock_fails_clearly(tmp_path):
    path = tmp_path / "s.sqlite3"
    first, second = SessionsDB(path, busy_timeout=0.5), SessionsDB(path)  # two servers on one file
    first.save(new_info("a"), StoredSession(None))
    second.save(new_info("b"), StoredSession(None))
    assert set(first.sessions()) == set(second.sessions()) == {"a", "b"}
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer that does not let go
    start = time.monotonic()
    with pytest.raises(SessionStorageError, match="is locked: another process") as e:
        SessionsDB(path, busy_timeout=0.3)
    assert time.monotonic() - start >= 0.25 and str(path) in str(e.value)
    start = time.monotonic()
    with pytest.raises(SessionStorageError, match="locked"):
        first.save(new_info("c"), StoredSession(None))
    assert time.monotonic() - start >= 0.45  # it waited its busy_timeout for the lock
    holder.execute("ROLLBACK")
    first.save(new_info("c"), StoredSession(None))  # and works once the other lets go
    assert "c" in second.sessions()
    holder.close()


def test_the_data_dir_follows_engine_data_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGINE_DATA", str(tmp_path / "mine"))
    assert default_sessions_db() == tmp_path / "mine" / "sessions.sqlite3"
    monkeypatch.delenv("ENGINE_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert engine_data_dir() == tmp_path / "xdg" / "engine"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # the XDG spec says to ignore a relative one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert engine_data_dir() == tmp_path / "home" / ".local" / "share" / "engine"
