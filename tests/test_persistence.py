"""Chat history storage: the schema matches what the installed Chainlit writes and reads (drift
test), is created and migrated by the app, and works on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import inspect
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import chainlit.data.sql_alchemy as chainlit_sql
import pytest
from chainlit.auth import create_jwt
from chainlit.element import ElementDict
from chainlit.step import StepDict
from chainlit.types import Feedback, Pagination, ThreadDict, ThreadFilter
from chainlit.user import User

from streamchat.core.errors import ConfigError
from streamchat.core.history import answer_metadata
from streamchat.core.types import ChatMessage, EndReason
from streamchat.hosting.persistence import (
    ELEMENTS,
    FEEDBACKS,
    SCHEMA,
    STEPS,
    THREADS,
    USERS,
    Database,
    StreamchatDataLayer,
    conversation_from_steps,
    last_answer_id,
)
from streamchat.hosting.security import current_request
from tests.databases import PostgresCluster, postgres_cluster, postgres_server

# --- drift: our schema against the installed Chainlit -----------------------------------------


def columns(table) -> set[str]:
    return {column.name for column in table.columns}


def test_every_key_chainlit_writes_has_a_column():
    assert set(StepDict.__annotations__) - {"feedback"} <= columns(STEPS)
    assert set(ElementDict.__annotations__) <= columns(ELEMENTS)
    assert {f.name for f in dataclasses.fields(Feedback)} <= columns(FEEDBACKS)
    assert set(ThreadDict.__annotations__) - {"steps", "elements"} <= columns(THREADS)
    assert "autoCollapse" in columns(STEPS), "chainlit 2.12 writes it (upstream issue #2832)"


def test_every_column_chainlits_queries_name_exists():
    source = inspect.getsource(chainlit_sql)
    tables = {t.name: columns(t) for t in SCHEMA.sorted_tables}
    aliases = {"t": "threads", "s": "steps", "e": "elements", "f": "feedbacks"}
    for alias, name in re.findall(r'\b([tsef])\."(\w+)"', source):
        assert name in tables[aliases[alias]], f'{aliases[alias]}."{name}" is read by Chainlit'
    for table, listed in re.findall(r"INSERT INTO (\w+) \(([^)]*\"[^)]*)\)", source):
        for name in re.findall(r'"(\w+)"', listed):
            assert name in tables[table], f"{table}.{name} is written by Chainlit"
    for table, name in re.findall(r'FROM (\w+) WHERE "?(\w+)"? =', source):
        assert name in tables[table]
    assert columns(USERS) >= {"id", "identifier", "metadata", "createdAt"}


# --- the URL ----------------------------------------------------------------------------------


def test_database_urls():
    assert Database.parse("sqlite:///chats.db").url == "sqlite+aiosqlite:///chats.db"
    pg = Database.parse("postgresql://app:s3cret@db:5432/chat")
    assert pg.url == "postgresql+asyncpg://app:s3cret@db:5432/chat"
    assert "s3cret" not in pg.public_url and pg.dialect == "postgresql"
    assert Database.from_env({}) == Database.parse("sqlite:///streamchat.db")
    assert Database.from_env({"DATABASE_URL": "off"}) is None
    for bad in ("mysql://x/y", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(ConfigError, match="DATABASE_URL"):
            Database.parse(bad)


# --- the data layer on real databases ---------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def layer(request, tmp_path: Path) -> AsyncIterator[StreamchatDataLayer]:
    if request.param == "sqlite":
        database = Database.parse(f"sqlite:///{tmp_path / 'chats.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        name = f"t{uuid.uuid4().hex[:10]}"
        admin = StreamchatDataLayer(Database.parse(url))
        async with admin.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql(f"CREATE DATABASE {name}")
        await admin.engine.dispose()
        database = Database.parse(url.rsplit("/", 1)[0] + f"/{name}")
    data_layer = StreamchatDataLayer(database)
    assert set(await data_layer.create_schema()) == {t.name for t in SCHEMA.sorted_tables}
    assert await data_layer.create_schema() == [], "a second start changes nothing"
    yield data_layer
    await data_layer.engine.dispose()


async def save(layer: StreamchatDataLayer, item: dict) -> None:
    """create_step outside a chat (Chainlit's wrapper queues steps until a chat's first
    message, which needs a live session)."""
    await StreamchatDataLayer.create_step.__wrapped__(layer, item)  # type: ignore[attr-defined]


def step(thread_id: str, kind: str, output: str, **extra) -> dict:
    now = f"2026-11-24T10:{len(output) % 60:02d}:00Z"
    return {
        "id": str(uuid.uuid4()),
        "threadId": thread_id,
        "name": "Assistant" if kind != "user_message" else "alice",
        "type": kind,
        "streaming": False,
        "output": output,
        "createdAt": now,
        "start": now,
        "end": now,
        "metadata": {},
        **extra,
    }


async def test_threads_steps_and_feedback_round_trip(layer: StreamchatDataLayer):
    alice = await layer.create_user(User(identifier="alice", metadata={"provider": "password"}))
    bob = await layer.create_user(User(identifier="bob", metadata={}))
    assert alice is not None and bob is not None
    assert (await layer.get_user("alice")).identifier == "alice"  # type: ignore[union-attr]
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="First chat", user_id=alice.id)
    question = step(thread_id, "user_message", "What is a token?")
    answer = step(
        thread_id,
        "assistant_message",
        "A token is a piece of a word.\n\n*(Interrupted: connection lost after 8 tokens.)*",
        metadata=answer_metadata("A token is a piece of a word.", EndReason.ERROR, "s1"),
    )
    # A step that is not a message, with every field chainlit 2.12 writes (autoCollapse too).
    tool = step(
        thread_id,
        "tool",
        "raw chunks",
        autoCollapse=True,
        defaultOpen=False,
        showInput="json",
        language="json",
        parentId=answer["id"],
        tags=["teaching"],
    )
    for item in (question, answer, tool):
        await save(layer, item)
    await layer.upsert_feedback(Feedback(forId=answer["id"], value=1, threadId=thread_id))

    thread = await layer.get_thread(thread_id)
    assert thread is not None and thread["userIdentifier"] == "alice"
    stored = {s["id"]: s for s in thread["steps"]}
    assert set(stored) == {question["id"], answer["id"], tool["id"]}, "no step silently lost"
    assert stored[tool["id"]]["output"] == "raw chunks"
    assert stored[answer["id"]]["feedback"]["value"] == 1
    history = conversation_from_steps(thread["steps"])
    assert [t.content for t in history.turns] == [
        "What is a token?",
        "A token is a piece of a word.",
    ]
    assert history.interrupted_answer() is not None

    # Each user sees only their own threads.
    await layer.update_thread(str(uuid.uuid4()), name="Bob's", user_id=bob.id)
    mine = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=alice.id))
    assert [t["id"] for t in mine.data] == [thread_id]
    assert await layer.get_thread_author(thread_id) == "alice"

    await layer.delete_thread(thread_id)
    assert await layer.get_thread(thread_id) is None


async def test_an_older_schema_is_migrated(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        # Chainlit's documented steps table, without the columns 2.12 added.
        connection.executescript(
            """
            CREATE TABLE threads ("id" TEXT PRIMARY KEY, "createdAt" TEXT, "name" TEXT,
                "userId" TEXT, "userIdentifier" TEXT, "tags" TEXT, "metadata" TEXT);
            CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL,
                "type" TEXT NOT NULL, "threadId" TEXT NOT NULL, "parentId" TEXT,
                "streaming" BOOLEAN NOT NULL, "waitForAnswer" BOOLEAN, "isError" BOOLEAN,
                "metadata" TEXT, "tags" TEXT, "input" TEXT, "output" TEXT, "createdAt" TEXT,
                "start" TEXT, "end" TEXT, "generation" TEXT, "showInput" TEXT,
                "language" TEXT, "indent" INT);
            INSERT INTO threads ("id", "name") VALUES ('old', 'kept');
            """
        )
    layer = StreamchatDataLayer(Database.parse(f"sqlite:///{path}"))
    try:
        added = await layer.create_schema()
        assert {"steps.autoCollapse", "steps.defaultOpen", "steps.command", "users"} <= set(added)
        await save(layer, step("old", "tool", "saved now", autoCollapse=True))
        thread = await layer.get_thread("old")
        assert thread is not None and thread["name"] == "kept"
        assert [s["output"] for s in thread["steps"]] == ["saved now"]
    finally:
        await layer.engine.dispose()


# --- rebuilding the conversation --------------------------------------------------------------


def test_conversation_from_steps_keeps_what_the_model_saw():
    t = "thread"
    steps = [
        step(t, "user_message", "blocked question with an email"),
        step(t, "assistant_message", "Your message was not sent", isError=True),
        step(t, "user_message", "What is a token?"),
        step(
            t,
            "assistant_message",
            "A token is\n\n*(Interrupted)*",
            metadata=answer_metadata("A token is", EndReason.ERROR, "a"),
        ),
        step(
            t,
            "assistant_message",
            " a piece of a word.",
            metadata=answer_metadata(" a piece of a word.", EndReason.COMPLETE, "b"),
        ),
        step(t, "user_message", "And TTFT?"),
        step(
            t,
            "assistant_message",
            "Time to first",
            metadata='{"streamchat": {"text": "Time to first", "reason": "stopped_by_user"}}',
        ),
    ]
    history = conversation_from_steps(steps)
    assert history.messages("") == (
        ChatMessage("user", "What is a token?"),
        ChatMessage("assistant", "A token is a piece of a word."),
        ChatMessage("user", "And TTFT?"),
        ChatMessage("assistant", "Time to first"),
    )
    assert history.turns[-1].ended is EndReason.STOPPED_BY_USER
    assert last_answer_id(steps) == steps[-1]["id"]


# --- replicas and outages on a real PostgreSQL -------------------------------------------------


async def fresh_database(url: str) -> Database:
    name = f"t{uuid.uuid4().hex[:10]}"
    admin = StreamchatDataLayer(Database.parse(url))
    async with admin.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.exec_driver_sql(f"CREATE DATABASE {name}")
    await admin.engine.dispose()
    return Database.parse(url.rsplit("/", 1)[0] + f"/{name}")


async def test_replicas_starting_together_on_an_empty_database_both_prepare_it(postgres_url):
    database = await fresh_database(postgres_url)
    replicas = [StreamchatDataLayer(database) for _ in range(4)]
    try:
        added = await asyncio.gather(*(replica.create_schema() for replica in replicas))
        tables = {t.name for t in SCHEMA.sorted_tables}
        assert sorted(map(set, added), key=len) == [set(), set(), set(), tables], (
            "one replica created the tables, the others found them"
        )
    finally:
        for replica in replicas:
            await replica.engine.dispose()


@pytest.fixture
def outage() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own, to stop and start."""
    with postgres_cluster() as cluster:
        yield cluster


async def test_writes_during_an_outage_are_saved_when_the_database_is_back(outage):
    told: list[str] = []
    problems: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: problems.append(str(context.get("message")))
    )

    async def notify() -> None:
        told.append("history is not being saved")

    layer = StreamchatDataLayer(Database.parse(outage.url), notify_unsaved=notify, retry_s=0.2)
    try:
        assert await layer.prepare()
        alice = await layer.create_user(User(identifier="alice", metadata={}))
        assert alice is not None
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="Before", user_id=alice.id)
        question = step(thread_id, "user_message", "What is a token?")
        await save(layer, question)

        await asyncio.to_thread(outage.stop)
        answer = step(thread_id, "assistant_message", "A token is a piece of a word.")
        await save(layer, answer)  # no exception reaches Chainlit
        await layer.update_thread(thread_id, name="Renamed while down")
        await layer.upsert_feedback(Feedback(forId=answer["id"], value=1, threadId=thread_id))
        later = step(thread_id, "user_message", "And a second question")
        await save(layer, later)
        assert layer.down and len(layer.pending) >= 4
        assert told, "the chat was told that history is not being saved"
        assert await layer.get_thread(thread_id) is None, "reads find nothing, quietly"

        assert await asyncio.to_thread(outage.start)
        await asyncio.wait_for(layer.back.wait(), 30)
        thread = await layer.get_thread(thread_id)
        assert thread is not None and thread["name"] == "Renamed while down"
        stored = {s["id"]: s for s in thread["steps"]}
        assert set(stored) == {question["id"], answer["id"], later["id"]}, "nothing lost"
        assert stored[answer["id"]]["feedback"]["value"] == 1
        assert not layer.pending
    finally:
        await layer.engine.dispose()
    gc.collect()
    await asyncio.sleep(0)
    assert not [p for p in problems if "never retrieved" in p], problems


async def test_a_database_down_at_start_is_prepared_when_it_answers(outage):
    await asyncio.to_thread(outage.stop)
    layer = StreamchatDataLayer(Database.parse(outage.url), notify_unsaved=None, retry_s=0.2)
    try:
        assert not await layer.prepare(), "no schema yet: writes are queued"
        thread_id = str(uuid.uuid4())
        await layer.update_thread(thread_id, name="Written while down")
        await save(layer, step(thread_id, "user_message", "Hello"))
        assert await asyncio.to_thread(outage.start)
        await asyncio.wait_for(layer.back.wait(), 30)
        assert layer.schema_ready
        thread = await layer.get_thread(thread_id)
        assert thread is not None and [s["output"] for s in thread["steps"]] == ["Hello"]
    finally:
        await layer.engine.dispose()


async def test_feedback_only_on_answers_in_the_users_own_chats(layer, monkeypatch):
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", "a-test-secret-that-is-long-enough-for-hs256-01")
    alice = await layer.create_user(User(identifier="alice", metadata={}))
    thread_id = str(uuid.uuid4())
    await layer.update_thread(thread_id, name="Alice's", user_id=alice.id)
    answer = step(thread_id, "assistant_message", "An answer")
    await save(layer, answer)

    def as_request_from(user: str) -> None:
        token = create_jwt(User(identifier=user, metadata={}))
        current_request.set(
            {"type": "http", "headers": [(b"cookie", f"access_token={token}".encode())]}
        )

    as_request_from("bob")
    with pytest.raises(PermissionError):
        await layer.upsert_feedback(Feedback(forId=answer["id"], value=0, threadId=thread_id))
    as_request_from("alice")
    feedback_id = await layer.upsert_feedback(
        Feedback(forId=answer["id"], value=1, threadId=thread_id)
    )
    as_request_from("bob")
    with pytest.raises(PermissionError):
        await layer.delete_feedback(feedback_id)
    current_request.set(None)
    thread = await layer.get_thread(thread_id)
    assert thread is not None
    assert [s["feedback"]["value"] for s in thread["steps"]] == [1], "bob changed nothing"


async def test_a_wrong_statement_is_logged_not_mistaken_for_an_outage(tmp_path: Path):
    layer = StreamchatDataLayer(Database.parse(f"sqlite:///{tmp_path / 'empty.db'}"))
    try:
        result = await layer.execute_sql('INSERT INTO nowhere ("id") VALUES (:id)', {"id": "x"})
        assert result is None
        assert not layer.down and not layer.pending, "waiting would not fix it: not queued"
    finally:
        await layer.engine.dispose()


async def test_closing_during_an_outage_stops_waiting_and_says_what_is_lost(outage, caplog):
    layer = StreamchatDataLayer(Database.parse(outage.url), notify_unsaved=None, retry_s=0.2)
    assert await layer.prepare()
    await asyncio.to_thread(outage.stop)
    await layer.update_thread(str(uuid.uuid4()), name="never saved")
    recovery = layer._recovery
    assert recovery is not None and not recovery.done()
    await layer.close()
    assert recovery.cancelled()
    assert "1 history writes were never saved" in caplog.text
